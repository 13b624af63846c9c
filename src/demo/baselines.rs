//! The plaintext baselines, computed in the demo's own process from the same local training
//! the nodes run: the plan's fixed-point rounds (the decrypted models must equal them bit for
//! bit), the same rounds in floating point (the accuracy to match), and each institution
//! alone.

use anyhow::Result;
use node::source::{TrainingSource, UpdateSource};
use protocol::round::optimizer::FloatState;
use protocol::round::{RoundPlan, model_digest};
use training::trainer::Evaluation;

/// The pooled measure of a global model over every institution's held-out rows.
pub(super) fn pooled(sources: &[TrainingSource], global: &[f32]) -> Evaluation {
    let mut total = Evaluation::default();
    for source in sources {
        if let Some(e) = source.held_out(global) {
            total.add(&e);
        }
    }
    total
}

/// Per round: the model digest and pooled measure of the plan's plaintext fixed-point
/// rounds (FedAvg or its server optimizer), which the encrypted rounds must match bit for bit.
pub(super) fn fixed_point(
    plan: &RoundPlan,
    sources: &mut [TrainingSource],
    rounds: u32,
) -> Result<Vec<(String, Evaluation)>> {
    let mut model = vec![0i64; plan.values as usize];
    let mut state = plan.initial_optimizer_state();
    let mut out = Vec::new();
    for round in 1..=u64::from(rounds) {
        let global = plan.decode_model(&model);
        let updates = sources
            .iter_mut()
            .map(|s| s.update(round, &global).map(|u| (u.values, u.samples)))
            .collect::<Result<Vec<_>, _>>()?;
        plan.reference_round(&mut model, &mut state, &updates)?;
        out.push((
            hex::encode(model_digest(&model)),
            pooled(sources, &plan.decode_model(&model)),
        ));
    }
    Ok(out)
}

/// Per round: the pooled measure of the same rounds in floating point, over the same local
/// training, with the same clipping, rates and optimizer but exact sample weights and no
/// quantisation.
pub(super) fn float(
    plan: &RoundPlan,
    sources: &mut [TrainingSource],
    rounds: u32,
) -> Result<Vec<Evaluation>> {
    let mut model = vec![0.0f64; plan.values as usize];
    let mut state = FloatState::default();
    let rate = f64::from(plan.aggregation_rate_millis()) / 1000.0;
    let server_rate = f64::from(plan.server_rate_millis) / 1000.0;
    let clip = f64::from(plan.clip);
    let split = plan.optimized_values();
    let mut out = Vec::new();
    for round in 1..=u64::from(rounds) {
        let global: Vec<f32> = model.iter().map(|&v| v as f32).collect();
        let updates = sources
            .iter_mut()
            .map(|s| s.update(round, &global))
            .collect::<Result<Vec<_>, _>>()?;
        let total: u64 = updates.iter().map(|u| u.samples).sum();
        let mut average = model.clone();
        for update in &updates {
            let weight = rate * update.samples as f64 / total as f64;
            for (m, u) in average.iter_mut().zip(&update.values) {
                *m += weight * f64::from(*u).clamp(-clip, clip);
            }
        }
        let mut next = plan.optimizer.step_float(
            server_rate,
            server_rate * clip,
            &model[..split],
            &average[..split],
            &mut state,
        );
        next.extend_from_slice(&average[split..]);
        model = next;
        let global: Vec<f32> = model.iter().map(|&v| v as f32).collect();
        out.push(pooled(sources, &global));
    }
    Ok(out)
}

/// Each institution trained alone for the same training rounds: the same network, initial
/// model and local training, but only its own rows, so its own feature scaling and no clip
/// (there is no consortium to agree one with). Measured on its own held-out rows, the rows the
/// consortium's model is measured on beside it: what joining the consortium is worth to it.
pub(super) fn alone(
    sources: &mut [TrainingSource],
    rounds: std::ops::RangeInclusive<u64>,
) -> Result<Vec<Option<Evaluation>>> {
    sources
        .iter_mut()
        .map(|source| {
            let mut model = vec![0.0f32; source.global_size()];
            for round in rounds.clone() {
                let update = source.update(round, &model)?;
                for (m, u) in model.iter_mut().zip(&update.values) {
                    *m += u;
                }
            }
            Ok(source.held_out(&model))
        })
        .collect()
}
