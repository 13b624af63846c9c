//! Where Delta sits and which bits of each word partials and bodies keep, given the error
//! terms the budget computed (`budget.rs`) and how messages are read (`Decoding`): the layout
//! of a budget.

use super::Window;

/// The error terms of a decrypted coordinate other than the rounding of partials and bodies.
pub(super) struct Errors {
    /// The bound of the secret-dependent noise.
    pub(super) secret_noise: f64,
    /// One quorum member's smudging, at most.
    pub(super) smudging: f64,
    pub(super) threshold: f64,
    /// The L1 norm of every weight applied to the ciphertext.
    pub(super) l1: f64,
}

/// Delta as the budget uses it, and the windows of partials and bodies.
pub(super) struct Layout {
    pub(super) delta_bits: u32,
    pub(super) read_bits: u32,
    pub(super) share_window: Window,
    pub(super) body_window: Window,
}

/// The layout of every budget that reads messages from their phase alone, as it was before
/// relative decoding: Delta as chosen, partials rounded `2 + log2(t)` bits under it. Kept
/// exactly, so that a key's ciphertexts and partials from before keep their meaning.
pub(super) fn absolute_layout(
    delta_bits: u32,
    message_bits: u32,
    threshold: u8,
    errors: &Errors,
) -> Layout {
    let share_window = share_window(delta_bits, message_bits, threshold);
    let body_window = body_window(
        delta_bits,
        message_bits,
        errors.l1,
        errors.other_than_bodies(share_window),
    );
    Layout {
        delta_bits,
        read_bits: message_bits,
        share_window,
        body_window,
    }
}

/// The layout of a budget that reads messages against a reference, |m - reference| < 2^read_bits.
///
/// Partials then need `read_bits + 1` bits above Delta and a few below it, so a byte more or
/// less turns on one or two bits. For each Delta from the one chosen up to two bits higher (as
/// far as the message space spares them), partials are rounded as high as the error allows:
/// t * 2^(d - 1) with every other term, bodies rounded at bit 64 included, within 7/8 of
/// Delta / 2. Bodies then take the room left (see `body_window`). The layout sending the
/// fewest bytes of partial and body a value wins, then the one with the fewer bytes of
/// partial, then the lower Delta. A higher Delta leaves the statistical security alone: the
/// smudging is set by the noise, not by Delta.
pub(super) fn relative_layout(
    delta_bits: u32,
    spare_bits: u32,
    read_bits: u32,
    errors: &Errors,
) -> Layout {
    let mut best: Option<Layout> = None;
    for delta in delta_bits..=delta_bits + spare_bits.min(2) {
        let top = phase_bits(delta, read_bits);
        let room = f64::from(delta - 1).exp2() * 0.875
            - errors.secret_noise
            - errors.threshold * errors.smudging
            - errors.l1 * f64::from(Window::MIN_DROPPED_BITS - 1).exp2();
        let fits = |d: u32| errors.threshold * f64::from(d - 1).exp2() <= room;
        let lowest = u32::from(Window::MIN_DROPPED_BITS);
        if !fits(lowest) {
            continue;
        }
        let mut highest = lowest;
        while highest < delta && fits(highest + 1) {
            highest += 1;
        }
        // The fewest whole bytes from the highest bottom, then the lowest bottom those bytes
        // reach to: a lower one only shrinks the rounding, and leaves bodies more room.
        let bytes = top.saturating_sub(highest).div_ceil(8).clamp(1, 8);
        let bottom = top.saturating_sub(8 * bytes).max(lowest);
        let share_window = Window::new(bottom as u8, bytes as u8)
            .expect("bottom >= 64 and top <= 128 by construction");
        let body_window = body_window(
            delta,
            read_bits,
            errors.l1,
            errors.other_than_bodies(share_window),
        );
        let layout = Layout {
            delta_bits: delta,
            read_bits,
            share_window,
            body_window,
        };
        let cost = |l: &Layout| {
            (
                l.share_window.bytes() + l.body_window.bytes(),
                l.share_window.bytes(),
            )
        };
        if best.as_ref().is_none_or(|b| cost(&layout) < cost(b)) {
            best = Some(layout);
        }
    }
    best.expect("the Delta chosen fits partials rounded at bit 64")
}

impl Errors {
    /// Everything but the bodies' rounding, with the partials rounded at `share_window`.
    fn other_than_bodies(&self, share_window: Window) -> f64 {
        self.secret_noise
            + self.threshold
                * (self.smudging + f64::from(u32::from(share_window.dropped_bits()) - 1).exp2())
    }
}

/// Bits of `value`: the least b with value < 2^b.
pub(super) fn bit_length(value: u64) -> u32 {
    64 - value.leading_zeros()
}

/// The window of a partial decryption for a budget of scale 2^delta_bits, messages below
/// 2^message_bits in magnitude and quorums of `threshold`.
///
/// - **Bottom.** Delta was chosen with the error bounded by 2^(Delta - 2) (to the f64
///   estimate's precision, about 10^-15), counting partials rounded at bit 64. Dropping d = Delta - 2 - ceil(log2 t) bits instead (never fewer than
///   64) adds at most t * 2^(d - 1) <= 2^(Delta - 3), so the error stays below
///   2^(Delta - 2) + 2^(Delta - 3) = 3/4 of Delta / 2 (the bodies' window then takes up to
///   another eighth, see `body_window`): decryption stays exact, and Delta is the same as
///   with 64-bit partials.
/// - **Top.** With |m| <= 2^message_bits - 1 and |e| < Delta / 2, the phase has
///   |Delta * m + e| < 2^(Delta + message_bits) - Delta / 2, so it is known from its residue
///   modulo 2^(Delta + message_bits + 1) read as signed (or modulo 2^128, whichever is
///   smaller).
///
/// Between the two, whole bytes: the spare bits of the last byte raise the top, unless it
/// would pass bit 128, where they lower the bottom instead (which only shrinks the rounding).
///
/// The top makes the budget's message bound load-bearing: a sum beyond 2^message_bits, which
/// decoded correctly below 2^(127 - Delta) when partials kept every top bit, now wraps modulo
/// 2^(w - Delta). Every flow stays inside it (a server optimizer clamps the model to
/// `RoundPlan::model_bound`), and an L1 norm counted short would show here first.
fn share_window(delta_bits: u32, message_bits: u32, threshold: u8) -> Window {
    let guard = 2 + u32::from(threshold).next_power_of_two().trailing_zeros();
    let bottom = delta_bits
        .saturating_sub(guard)
        .max(u32::from(Window::MIN_DROPPED_BITS));
    whole_bytes(bottom, phase_bits(delta_bits, message_bits))
}

/// The window of every ciphertext body under a budget of scale 2^delta_bits, messages below
/// 2^message_bits, weight L1 norm `l1` and every other error term summed to `other_error`
/// (secret-dependent noise, smudging, the partials' rounding at their window).
///
/// - **Bottom.** Decryption is exact while the error stays below Delta / 2. An aggregate's
///   bodies carry at most l1 * 2^(d - 1) of rounding when each is rounded at bit d, so d is the
///   largest with l1 * 2^(d - 1) <= 7/8 Delta / 2 - other_error, and never below 64. The
///   eighth left over is a margin against a miscounted bound, far above the f64 estimate's
///   error (about 10^-15). Delta was chosen counting bodies rounded at bit 64 and partials at
///   theirs, so the error is below 3/4 of Delta / 2 with d = 64, which always fits.
/// - **Top.** As for partials: the phase is known from its residue modulo
///   2^(Delta + message_bits + 1), so bodies are sent modulo that, in whole bytes up from
///   their own bottom (so their top may lie above or below the partials').
fn body_window(delta_bits: u32, message_bits: u32, l1: f64, other_error: f64) -> Window {
    let room = f64::from(delta_bits - 1).exp2() * 0.875 - other_error;
    let fits = |d: u32| l1 * f64::from(d - 1).exp2() <= room;
    debug_assert!(fits(64), "Delta was chosen with bodies rounded at bit 64");
    let mut bottom = 64;
    while bottom < delta_bits && fits(bottom + 1) {
        bottom += 1;
    }
    whole_bytes(bottom, phase_bits(delta_bits, message_bits))
}

/// Whole bytes from `bottom` up to at least `top`: the spare bits of the last byte raise the
/// top, unless it would pass bit 128, where they lower the bottom instead (which only shrinks
/// the rounding).
fn whole_bytes(bottom: u32, top: u32) -> Window {
    let bytes = (top.saturating_sub(bottom)).div_ceil(8).clamp(1, 8);
    let bottom = bottom.min(128 - 8 * bytes);
    Window::new(bottom as u8, bytes as u8).expect("bottom >= 64 and top <= 128 by construction")
}

/// The bits a combined phase needs: it is known from its residue modulo 2^phase_bits (see
/// `share_window`'s top).
pub(super) fn phase_bits(delta_bits: u32, message_bits: u32) -> u32 {
    (delta_bits + message_bits + 1).min(128)
}

#[cfg(test)]
mod tests {
    use super::super::{Budget, BudgetRequest, Decoding, ThresholdConfig};
    use super::*;

    /// Calls `f` with every request of the grid, at every threshold of 2 to 10 members, reading
    /// absolutely.
    fn each_request(
        value_bits: &[u32],
        terms: &[(u32, u64)],
        kappas: &[u32],
        rounds: &[u32],
        mut f: impl FnMut(BudgetRequest),
    ) {
        for parties in 2..=10u8 {
            for threshold in 2..=parties {
                let config = ThresholdConfig::new(parties, threshold).unwrap();
                for &value_bits in value_bits {
                    for &(max_contributions, weight_bound) in terms {
                        for &kappa in kappas {
                            for &rounds in rounds {
                                f(BudgetRequest {
                                    config,
                                    max_contributions,
                                    weight_bound,
                                    value_bits,
                                    kappa,
                                    rounds,
                                    decoding: Decoding::Absolute,
                                });
                            }
                        }
                    }
                }
            }
        }
    }

    /// Every error term of a decrypted coordinate together, with partials and bodies rounded
    /// at the budget's windows: the secret-dependent noise, t smudgings of at most 3 * 2^s,
    /// t partials' roundings and L1 bodies' roundings.
    fn error(budget: &Budget) -> f64 {
        let request = budget.request();
        let l1 = f64::from(request.max_contributions)
            * request.weight_bound as f64
            * f64::from(request.rounds);
        let rounding = |window: Window| f64::from(u32::from(window.dropped_bits()) - 1).exp2();
        budget.secret_noise_bits().exp2()
            + f64::from(request.config.threshold())
                * (3.0 * f64::from(budget.smudging_bits()).exp2() + rounding(budget.share_window()))
            + l1 * rounding(budget.body_window())
    }

    /// Every budget's window keeps decryption exact: its rounding stays within what Delta was
    /// chosen for, and its top above every phase a message of the budget can make.
    #[test]
    fn every_window_rounds_within_delta_and_reaches_above_the_largest_phase() {
        let (mut checked, mut narrower, mut narrower_bodies) = (0, 0, 0);
        let terms = [(1, 1), (5, 1), (1, 4104), (1000, 1 << 20)];
        each_request(
            &[1, 8, 17, 30, 45, 62],
            &terms,
            &[40, 56, 80],
            &[1, 50],
            |request| {
                let Ok(budget) = Budget::compute(request) else {
                    return;
                };
                let window = budget.share_window();
                let dropped = u32::from(window.dropped_bits());
                let delta = budget.delta_bits();
                let t = u32::from(request.config.threshold())
                    .next_power_of_two()
                    .trailing_zeros();
                // t * 2^(dropped - 1) <= 2^(Delta - 3), or the 64 bits Delta was chosen with.
                assert!(
                    dropped == 64 || dropped - 1 + t <= delta - 3,
                    "{request:?}: {window:?} at Delta 2^{delta}"
                );
                assert!(
                    window.top_bit() >= (delta + budget.message_bits() + 1).min(128),
                    "{request:?}: {window:?} at Delta 2^{delta}"
                );
                // Every error term together, with bodies rounded at their window, stays below 7/8
                // of Delta / 2.
                let body = budget.body_window();
                assert!(
                    error(&budget) <= 0.875 * f64::from(delta - 1).exp2(),
                    "{request:?}: {body:?} at Delta 2^{delta}"
                );
                assert!(
                    body.top_bit() >= (delta + budget.message_bits() + 1).min(128),
                    "{request:?}: {body:?} at Delta 2^{delta}"
                );
                checked += 1;
                narrower += usize::from(window.bytes() < 8);
                narrower_bodies += usize::from(body.bytes() < 8);
            },
        );
        assert!(checked > 1000, "{checked}");
        assert!(narrower > checked / 2, "{narrower} of {checked}");
        assert!(
            narrower_bodies > checked / 2,
            "{narrower_bodies} of {checked}"
        );
    }

    /// Every relative layout keeps decryption exact and sends no more than the absolute one
    /// of the same request: every error term, with partials and bodies rounded at their
    /// windows, within 7/8 of Delta / 2; both windows reaching above one round's largest
    /// change; Delta raised by at most two bits, and only out of the spare message space.
    #[test]
    fn every_relative_layout_stays_exact_and_sends_no_more_than_the_absolute_one() {
        let (mut checked, mut fewer) = (0, 0);
        let terms = [(1, 1), (1, 4105), (1, 1 << 20)];
        each_request(
            &[1, 8, 17, 30, 45],
            &terms,
            &[40, 49, 56, 80],
            &[1, 2, 50, 1000],
            |absolute| {
                let Ok(before) = Budget::compute(absolute) else {
                    return;
                };
                let bound =
                    ((1u64 << absolute.value_bits) - 1).saturating_mul(absolute.weight_bound);
                let request = BudgetRequest {
                    decoding: Decoding::Relative { bound },
                    ..absolute
                };
                let budget = Budget::compute(request).unwrap();
                let beyond = 1u64 << before.message_bits().min(63);
                assert!(
                    before.message_bits() >= 64
                        || Budget::compute(BudgetRequest {
                            decoding: Decoding::Relative { bound: beyond },
                            ..absolute
                        })
                        .is_err()
                );
                let delta = budget.delta_bits();
                assert!(delta >= before.delta_bits());
                assert_eq!(
                    delta - before.delta_bits(),
                    before.spare_bits() - budget.spare_bits(),
                    "{request:?}"
                );
                assert!(delta - before.delta_bits() <= 2, "{request:?}");
                let (share, body) = (budget.share_window(), budget.body_window());
                assert!(
                    error(&budget) <= 0.875 * f64::from(delta - 1).exp2(),
                    "{request:?}: {share:?} {body:?} at Delta 2^{delta}"
                );
                let top = (delta + 64 - bound.leading_zeros() + 1).min(128);
                assert_eq!(budget.phase_bits(), top);
                assert!(share.top_bit() >= top && body.top_bit() >= top);
                assert!(share.bytes() <= before.share_window().bytes());
                assert!(
                    share.bytes() + body.bytes()
                        <= before.share_window().bytes() + before.body_window().bytes(),
                    "{request:?}"
                );
                checked += 1;
                fewer += usize::from(share.bytes() < before.share_window().bytes());
            },
        );
        assert!(checked > 1000, "{checked}");
        assert!(fewer > checked / 4, "{fewer} of {checked}");
    }
}
