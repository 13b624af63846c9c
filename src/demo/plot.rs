//! The report's plot: accuracy per round, encrypted against float FedAvg, as a small
//! self-contained SVG.

use super::report::RoundRecord;

/// Accuracy per round, encrypted against float FedAvg, as a small self-contained SVG.
pub(super) fn accuracy_svg(rounds: &[RoundRecord]) -> String {
    let (width, height, margin) = (640.0, 360.0, 50.0);
    let values = rounds
        .iter()
        .flat_map(|r| [r.accuracy, r.float_accuracy])
        .flatten();
    let low = values.fold(1.0f64, f64::min);
    let low = ((low * 20.0).floor() / 20.0).clamp(0.0, 0.95);
    let x = |round: u64| {
        let span = (rounds.len().max(2) - 1) as f64;
        margin + (round.saturating_sub(1)) as f64 / span * (width - 2.0 * margin)
    };
    let y = |v: f64| height - margin - (v - low) / (1.0 - low) * (height - 2.0 * margin);
    let line = |pick: fn(&RoundRecord) -> Option<f64>| {
        rounds
            .iter()
            .filter_map(|r| Some(format!("{:.1},{:.1}", x(r.round), y(pick(r)?))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{margin}\" y=\"24\" font-size=\"14\">Test accuracy per round: encrypted \
         FedAvg against float FedAvg</text>\n"
    );
    let mut tick = low;
    while tick <= 1.0 + 1e-9 {
        let (right, at, label) = (width - margin, y(tick), tick * 100.0);
        svg.push_str(&format!(
            "<line x1=\"{margin}\" x2=\"{right:.1}\" y1=\"{at:.1}\" y2=\"{at:.1}\" \
             stroke=\"#ddd\"/><text x=\"8\" y=\"{:.1}\">{label:.0} %</text>\n",
            at + 4.0
        ));
        tick += 0.05;
    }
    for r in rounds {
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
            x(r.round),
            height - margin + 18.0,
            r.round
        ));
    }
    svg.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">round</text>\n\
         <polyline fill=\"none\" stroke=\"#d62728\" stroke-width=\"2\" stroke-dasharray=\"6 4\" \
         points=\"{}\"/>\n\
         <polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"{}\"/>\n\
         <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#1f77b4\">encrypted (Quorate)</text>\n\
         <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#d62728\">float FedAvg (plaintext)</text>\n\
         </svg>\n",
        width / 2.0,
        height - 12.0,
        line(|r| r.float_accuracy),
        line(|r| r.accuracy),
        width - margin - 170.0,
        height - margin - 40.0,
        width - margin - 170.0,
        height - margin - 22.0,
    ));
    svg
}
