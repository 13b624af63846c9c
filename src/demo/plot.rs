//! The report's plot, a small self-contained SVG in two panels: accuracy per round, encrypted
//! against the float baseline, and each institution trained alone against the consortium.

use super::report::{InstitutionRecord, RoundRecord};

const WIDTH: f64 = 640.0;
const MARGIN: f64 = 50.0;
/// Height of the accuracy-per-round panel.
const LINES_HEIGHT: f64 = 360.0;
/// Height of the per-institution panel below it.
const BARS_HEIGHT: f64 = 260.0;
const ENCRYPTED: &str = "#1f77b4";
const FLOAT: &str = "#d62728";
const ALONE: &str = "#9e9e9e";

/// Both panels in one SVG.
pub(super) fn accuracy_svg(
    rounds: &[RoundRecord],
    institutions: &[InstitutionRecord],
    optimizer: &str,
) -> String {
    let height = LINES_HEIGHT + BARS_HEIGHT;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    lines_panel(&mut svg, rounds, optimizer);
    bars_panel(&mut svg, institutions, LINES_HEIGHT);
    svg.push_str("</svg>\n");
    svg
}

/// Accuracy per round. The encrypted model is bit-identical to fixed-point training, so its
/// line usually lies on the float baseline's: the baseline is drawn as a wide translucent band
/// and the encrypted model as a thin line with a marker per round on top of it, so both stay
/// visible whether they coincide or not.
fn lines_panel(svg: &mut String, rounds: &[RoundRecord], optimizer: &str) {
    let values = rounds
        .iter()
        .flat_map(|r| [r.accuracy, r.float_accuracy])
        .flatten();
    let low = values.fold(1.0f64, f64::min);
    let low = ((low * 20.0).floor() / 20.0).clamp(0.0, 0.95);
    let x = |round: u64| {
        let span = (rounds.len().max(2) - 1) as f64;
        MARGIN + (round.saturating_sub(1)) as f64 / span * (WIDTH - 2.0 * MARGIN)
    };
    let y =
        |v: f64| LINES_HEIGHT - MARGIN - (v - low) / (1.0 - low) * (LINES_HEIGHT - 2.0 * MARGIN);
    let points = |pick: fn(&RoundRecord) -> Option<f64>| {
        rounds
            .iter()
            .filter_map(|r| Some((x(r.round), y(pick(r)?))))
            .collect::<Vec<_>>()
    };
    let joined = |points: &[(f64, f64)]| {
        points
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    svg.push_str(&format!(
        "<text x=\"{MARGIN}\" y=\"24\" font-size=\"14\">Test accuracy per round: encrypted \
         {optimizer} against float {optimizer}</text>\n"
    ));
    let mut tick = low;
    while tick <= 1.0 + 1e-9 {
        let (right, at, label) = (WIDTH - MARGIN, y(tick), tick * 100.0);
        svg.push_str(&format!(
            "<line x1=\"{MARGIN}\" x2=\"{right:.1}\" y1=\"{at:.1}\" y2=\"{at:.1}\" \
             stroke=\"#ddd\"/><text x=\"8\" y=\"{:.1}\">{label:.0} %</text>\n",
            at + 4.0
        ));
        tick += 0.05;
    }
    for r in rounds {
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
            x(r.round),
            LINES_HEIGHT - MARGIN + 18.0,
            r.round
        ));
    }
    let encrypted = points(|r| r.accuracy);
    svg.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">round</text>\n\
         <polyline fill=\"none\" stroke=\"{FLOAT}\" stroke-opacity=\"0.35\" stroke-width=\"8\" \
         stroke-linejoin=\"round\" points=\"{}\"/>\n\
         <polyline fill=\"none\" stroke=\"{ENCRYPTED}\" stroke-width=\"2\" points=\"{}\"/>\n",
        WIDTH / 2.0,
        LINES_HEIGHT - 12.0,
        joined(&points(|r| r.float_accuracy)),
        joined(&encrypted),
    ));
    for (px, py) in &encrypted {
        svg.push_str(&format!(
            "<circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"3.5\" fill=\"{ENCRYPTED}\"/>\n"
        ));
    }
    let legend_x = WIDTH - MARGIN - 190.0;
    let legend_y = LINES_HEIGHT - MARGIN - 40.0;
    svg.push_str(&format!(
        "<line x1=\"{legend_x:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{ENCRYPTED}\" \
         stroke-width=\"2\"/><circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{ENCRYPTED}\"/>\n\
         <text x=\"{:.1}\" y=\"{:.1}\" fill=\"{ENCRYPTED}\">encrypted (Quorate)</text>\n\
         <line x1=\"{legend_x:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{FLOAT}\" \
         stroke-opacity=\"0.35\" stroke-width=\"8\"/>\n\
         <text x=\"{:.1}\" y=\"{:.1}\" fill=\"{FLOAT}\">float {optimizer} (plaintext)</text>\n",
        legend_x + 24.0,
        legend_y - 4.0,
        legend_y - 4.0,
        legend_x + 12.0,
        legend_y - 4.0,
        legend_x + 30.0,
        legend_y,
        legend_x + 24.0,
        legend_y + 14.0,
        legend_y + 14.0,
        legend_x + 30.0,
        legend_y + 18.0,
    ));
}

/// Per institution, two bars on its own held-out rows: the model it trained alone and the
/// consortium's final model.
fn bars_panel(svg: &mut String, institutions: &[InstitutionRecord], top: f64) {
    let bottom = top + BARS_HEIGHT - MARGIN;
    let plot_top = top + 60.0;
    let y = |v: f64| bottom - v.clamp(0.0, 1.0) * (bottom - plot_top);
    svg.push_str(&format!(
        "<text x=\"{MARGIN}\" y=\"{:.1}\" font-size=\"14\">Each institution's held-out rows: \
         trained alone against the consortium</text>\n",
        top + 20.0
    ));
    for tick in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let at = y(tick);
        svg.push_str(&format!(
            "<line x1=\"{MARGIN}\" x2=\"{:.1}\" y1=\"{at:.1}\" y2=\"{at:.1}\" stroke=\"#ddd\"/>\
             <text x=\"8\" y=\"{:.1}\">{:.0} %</text>\n",
            WIDTH - MARGIN,
            at + 4.0,
            tick * 100.0
        ));
    }
    let slot = (WIDTH - 2.0 * MARGIN) / institutions.len().max(1) as f64;
    let bar = (slot * 0.3).min(40.0);
    for (i, institution) in institutions.iter().enumerate() {
        let centre = MARGIN + slot * (i as f64 + 0.5);
        for (class, colour, value, left) in [
            (
                "alone",
                ALONE,
                institution.alone_accuracy,
                centre - bar - 2.0,
            ),
            (
                "consortium",
                ENCRYPTED,
                institution.consortium_accuracy,
                centre + 2.0,
            ),
        ] {
            let Some(value) = value else { continue };
            svg.push_str(&format!(
                "<rect class=\"{class}\" x=\"{left:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" \
                 height=\"{:.1}\" fill=\"{colour}\"/><text x=\"{:.1}\" y=\"{:.1}\" \
                 text-anchor=\"middle\" font-size=\"10\">{:.1}</text>\n",
                y(value),
                bottom - y(value),
                left + bar / 2.0,
                y(value) - 3.0,
                value * 100.0
            ));
        }
        svg.push_str(&format!(
            "<text x=\"{centre:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
            bottom + 16.0,
            escape(&institution.name)
        ));
    }
    // The legend under the title, clear of the bars' value labels.
    let (legend_x, legend_y) = (MARGIN, top + 30.0);
    svg.push_str(&format!(
        "<rect x=\"{legend_x:.1}\" y=\"{legend_y:.1}\" width=\"12\" height=\"12\" \
         fill=\"{ALONE}\"/><text x=\"{:.1}\" y=\"{:.1}\">alone</text>\n\
         <rect x=\"{:.1}\" y=\"{legend_y:.1}\" width=\"12\" height=\"12\" \
         fill=\"{ENCRYPTED}\"/><text x=\"{:.1}\" y=\"{:.1}\">consortium</text>\n",
        legend_x + 16.0,
        legend_y + 10.0,
        legend_x + 70.0,
        legend_x + 86.0,
        legend_y + 10.0,
    ));
}

/// Institution names come from file names (`--data-dir`), so they are escaped for XML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(round: u64, accuracy: f64) -> RoundRecord {
        RoundRecord {
            round,
            phase: "training",
            accuracy: Some(accuracy),
            loss: Some(0.1),
            fixed_point_accuracy: Some(accuracy),
            float_accuracy: Some(accuracy),
            float_loss: Some(0.1),
            seconds: 1.0,
            bytes: 1,
            contributors: 3,
            model_digest: String::new(),
            bitexact_vs_fixed_point: true,
        }
    }

    fn institution(name: &str, alone: Option<f64>) -> InstitutionRecord {
        InstitutionRecord {
            name: name.into(),
            held_out_rows: 10,
            alone_accuracy: alone,
            consortium_accuracy: Some(0.9),
            gain_points: None,
        }
    }

    #[test]
    fn coinciding_lines_stay_visible_and_every_institution_gets_its_two_bars() {
        let svg = accuracy_svg(
            &[round(1, 0.8), round(2, 0.9)],
            &[institution("a<b", Some(0.7)), institution("c", None)],
            "FedAdam",
        );
        // The baseline is a wide band drawn first, the encrypted line thin on top with a
        // marker per round: equal lines do not hide one another.
        let band = svg.find("stroke-width=\"8\" stroke-linejoin").unwrap();
        let line = svg.find("stroke-width=\"2\" points").unwrap();
        assert!(band < line);
        assert_eq!(
            svg.matches("<circle").count(),
            2 + 1,
            "two rounds and the legend"
        );
        assert_eq!(
            svg.matches("class=\"alone\"").count(),
            1,
            "c has no alone model"
        );
        assert_eq!(svg.matches("class=\"consortium\"").count(), 2);
        assert!(svg.contains(">a&lt;b<") && !svg.contains("a<b"));
        assert!(svg.contains("float FedAdam (plaintext)"));
    }
}
