//! Charts as inline SVG, generated here so that pages need no script, no image file and no third-party code:
//! a line chart (a metric per round, ε against a budget) and a heatmap (utilities, hospital × round).
//!
//! Colours are SVG presentation attributes, not `style` attributes, which the Content-Security-Policy forbids.

use maud::{Markup, html};

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 240.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 40.0;

/// Series colours, colour-blind safe (Okabe–Ito).
const PALETTE: [&str; 6] = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9"];

/// One line of a chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Its name, for the legend.
    pub name: String,
    /// `(x, y)` points, in x order.
    pub points: Vec<(f64, f64)>,
}

/// A horizontal reference line, such as a budget.
#[derive(Clone, Debug, PartialEq)]
pub struct Reference {
    /// What it marks.
    pub label: String,
    /// Its y value.
    pub y: f64,
}

/// A line chart of `series` with an optional reference line; `x_label` and `y_label` name the axes. The x axis
/// is ticked at whole numbers (rounds, spends), the y axis at five evenly spaced values.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    reference: Option<&Reference>,
) -> Markup {
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let ys = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).chain(reference.map(|r| r.y));
    let (x_min, x_max) = padded_range(xs, 0.0);
    let (y_min, y_max) = padded_range(ys, 0.05);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x_at = |x: f64| LEFT + (x - x_min) / (x_max - x_min) * plot_w;
    let y_at = |y: f64| TOP + (y_max - y) / (y_max - y_min) * plot_h;
    let x_ticks = integer_ticks(x_min, x_max);
    let y_ticks: Vec<f64> = (0..5).map(|i| y_min + (y_max - y_min) * f64::from(i) / 4.0).collect();
    html! {
        svg class="chart" viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img" aria-label=(title) xmlns="http://www.w3.org/2000/svg" {
            title { (title) }
            line x1=(LEFT) y1=(TOP + plot_h) x2=(LEFT + plot_w) y2=(TOP + plot_h) stroke="#444" {}
            line x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(TOP + plot_h) stroke="#444" {}
            @for tick in &x_ticks {
                line x1=(fmt(x_at(*tick))) y1=(TOP + plot_h) x2=(fmt(x_at(*tick))) y2=(TOP + plot_h + 4.0) stroke="#444" {}
                text x=(fmt(x_at(*tick))) y=(TOP + plot_h + 16.0) text-anchor="middle" font-size="11" { (tick) }
            }
            @for tick in &y_ticks {
                line x1=(LEFT - 4.0) y1=(fmt(y_at(*tick))) x2=(LEFT + plot_w) y2=(fmt(y_at(*tick))) stroke="#ddd" {}
                text x=(LEFT - 6.0) y=(fmt(y_at(*tick) + 4.0)) text-anchor="end" font-size="11" { (short_number(*tick)) }
            }
            text x=(fmt(LEFT + plot_w / 2.0)) y=(HEIGHT - 4.0) text-anchor="middle" font-size="12" { (x_label) }
            text x="12" y=(fmt(TOP + plot_h / 2.0)) text-anchor="middle" font-size="12"
                transform={ "rotate(-90 12 " (fmt(TOP + plot_h / 2.0)) ")" } { (y_label) }
            @if let Some(reference) = reference {
                line x1=(LEFT) y1=(fmt(y_at(reference.y))) x2=(LEFT + plot_w) y2=(fmt(y_at(reference.y)))
                    stroke="#b00020" stroke-dasharray="6 4" {}
                text x=(LEFT + plot_w) y=(fmt(y_at(reference.y) - 4.0)) text-anchor="end" font-size="11" fill="#b00020" {
                    (reference.label)
                }
            }
            @for (i, s) in series.iter().enumerate() {
                @let colour = PALETTE[i % PALETTE.len()];
                polyline fill="none" stroke=(colour) stroke-width="2"
                    points=(s.points.iter().map(|&(x, y)| format!("{},{}", fmt(x_at(x)), fmt(y_at(y)))).collect::<Vec<_>>().join(" ")) {}
                @for &(x, y) in &s.points {
                    circle cx=(fmt(x_at(x))) cy=(fmt(y_at(y))) r="3" fill=(colour) {
                        title { (s.name) " at " (short_number(x)) ": " (y) }
                    }
                }
                rect x=(LEFT + 8.0) y=(TOP + 4.0 + 14.0 * i as f64) width="10" height="10" fill=(colour) {}
                text x=(LEFT + 22.0) y=(TOP + 13.0 + 14.0 * i as f64) font-size="11" { (s.name) }
            }
        }
    }
}

/// A heatmap of `values[row][column]`: blue for positive values, red for negative, deeper for larger magnitudes
/// (relative to the largest), grey where there is no value. Each cell prints its value.
pub fn heatmap(title: &str, rows: &[String], columns: &[String], values: &[Vec<Option<f64>>]) -> Markup {
    const CELL_W: f64 = 64.0;
    const CELL_H: f64 = 24.0;
    const LABEL_W: f64 = 120.0;
    const HEADER_H: f64 = 24.0;
    let largest = values.iter().flatten().flatten().fold(0.0f64, |m, v| m.max(v.abs()));
    let width = LABEL_W + CELL_W * columns.len() as f64;
    let height = HEADER_H + CELL_H * rows.len() as f64;
    html! {
        svg class="heatmap" viewBox={ "0 0 " (width) " " (height) } width=(width) role="img" aria-label=(title) xmlns="http://www.w3.org/2000/svg" {
            title { (title) }
            @for (c, column) in columns.iter().enumerate() {
                text x=(fmt(LABEL_W + CELL_W * (c as f64 + 0.5))) y="16" text-anchor="middle" font-size="11" { (column) }
            }
            @for (r, row) in rows.iter().enumerate() {
                @let y = HEADER_H + CELL_H * r as f64;
                text x=(LABEL_W - 6.0) y=(fmt(y + 16.0)) text-anchor="end" font-size="11" { (row) }
                @for (c, value) in values.get(r).map(Vec::as_slice).unwrap_or_default().iter().enumerate() {
                    @let x = LABEL_W + CELL_W * c as f64;
                    rect x=(fmt(x)) y=(fmt(y)) width=(CELL_W - 2.0) height=(CELL_H - 2.0) fill=(cell_colour(*value, largest)) {
                        title { (row) ", " (columns.get(c).map_or("", String::as_str)) ": "
                            @match value { Some(v) => (v), None => "no value" } }
                    }
                    text x=(fmt(x + CELL_W / 2.0 - 1.0)) y=(fmt(y + 15.0)) text-anchor="middle" font-size="10" {
                        @match value { Some(v) => (short_number(*v)), None => "—" }
                    }
                }
            }
        }
    }
}

/// The fill of a heatmap cell: white to blue for positive values, white to red for negative, grey for none.
fn cell_colour(value: Option<f64>, largest: f64) -> String {
    let Some(value) = value else { return "#e0e0e0".into() };
    let strength = if largest > 0.0 { (value.abs() / largest).clamp(0.0, 1.0) } else { 0.0 };
    // Light enough at full strength that the black value printed on it stays readable.
    let fade = |full: f64| (255.0 - (255.0 - full) * strength).round() as u8;
    if value >= 0.0 {
        format!("#{:02x}{:02x}{:02x}", fade(86.0), fade(160.0), fade(233.0))
    } else {
        format!("#{:02x}{:02x}{:02x}", fade(230.0), fade(110.0), fade(90.0))
    }
}

/// The range of `values`, widened by `pad` of its span on each side; a single value gets a span of its own size
/// (or 1), so that a flat line sits mid-chart.
fn padded_range(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (min, max) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !min.is_finite() || !max.is_finite() {
        return (0.0, 1.0);
    }
    if max - min < f64::EPSILON * max.abs().max(1.0) {
        let half = if min == 0.0 { 0.5 } else { min.abs() / 2.0 };
        return (min - half, max + half);
    }
    let span = max - min;
    (min - span * pad, max + span * pad)
}

/// Whole numbers between `min` and `max`, at most ten of them.
fn integer_ticks(min: f64, max: f64) -> Vec<f64> {
    let (first, last) = (min.ceil(), max.floor());
    if last < first {
        return Vec::new();
    }
    let step = ((last - first) / 10.0).ceil().max(1.0);
    let count = ((last - first) / step).floor() as u32;
    (0..=count).map(|i| first + step * f64::from(i)).collect()
}

/// A coordinate with at most two decimals, so that the SVG is compact and stable.
fn fmt(value: f64) -> String {
    let rounded = (value * 100.0).round() / 100.0;
    format!("{rounded}")
}

/// A figure for a label: up to four significant digits, without trailing zeros.
pub fn short_number(value: f64) -> String {
    if value == 0.0 {
        return "0".into();
    }
    let magnitude = value.abs().log10().floor() as i32;
    if !(-3..6).contains(&magnitude) {
        return format!("{value:.2e}");
    }
    let decimals = (3 - magnitude).max(0) as usize;
    let text = format!("{value:.decimals$}");
    if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.').to_owned() } else { text }
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;

    #[test]
    fn a_line_chart_places_points_and_the_budget_line() {
        let series = [Series { name: "h1".into(), points: vec![(1.0, 0.5), (2.0, 1.0), (3.0, 1.5)] }];
        let budget = Reference { label: "budget ε 2".into(), y: 2.0 };
        let svg = line_chart("ε of h1", "spend", "ε", &series, Some(&budget)).into_string();
        // y spans [0.5, 2] padded by 5 % of 1.5 each side, [0.425, 2.075], over the 184 px between y = 16 and 200:
        // 0.5 sits at 16 + 1.575 / 1.65 · 184 = 191.64. x spans [1, 3] over the 560 px from 64 to 624.
        assert!(svg.contains(r#"points="64,191.64 344,135.88 624,80.12""#), "{svg}");
        assert!(svg.contains(r##"y1="24.36" x2="624" y2="24.36" stroke="#b00020""##), "{svg}");
        assert!(!svg.contains("style="), "inline styles break the CSP: {svg}");
    }

    #[test]
    fn a_flat_series_sits_mid_chart() {
        let series = [Series { name: "auroc".into(), points: vec![(1.0, 0.7), (2.0, 0.7)] }];
        let svg = line_chart("auroc", "round", "auroc", &series, None).into_string();
        assert!(svg.contains(r#"points="64,108 624,108""#), "{svg}");
    }

    #[test]
    fn heatmap_cells_shade_by_magnitude_and_sign() {
        assert_eq!(cell_colour(Some(1.0), 1.0), "#56a0e9");
        assert_eq!(cell_colour(Some(-1.0), 1.0), "#e66e5a");
        assert_eq!(cell_colour(Some(0.0), 1.0), "#ffffff");
        assert_eq!(cell_colour(None, 1.0), "#e0e0e0");
        let svg = heatmap("u", &["h1".into()], &["round 1".into(), "round 2".into()], &[vec![Some(0.05), None]]);
        expect![[r##"<svg class="heatmap" viewBox="0 0 248 48" width="248" role="img" aria-label="u" xmlns="http://www.w3.org/2000/svg"><title>u</title><text x="152" y="16" text-anchor="middle" font-size="11">round 1</text><text x="216" y="16" text-anchor="middle" font-size="11">round 2</text><text x="114" y="40" text-anchor="end" font-size="11">h1</text><rect x="120" y="24" width="62" height="22" fill="#56a0e9"><title>h1, round 1: 0.05</title></rect><text x="151" y="39" text-anchor="middle" font-size="10">0.05</text><rect x="184" y="24" width="62" height="22" fill="#e0e0e0"><title>h1, round 2: no value</title></rect><text x="215" y="39" text-anchor="middle" font-size="10">—</text></svg>"##]]
        .assert_eq(&svg.into_string());
    }

    #[test]
    fn numbers_keep_four_significant_digits() {
        assert_eq!(short_number(0.123456), "0.1235");
        assert_eq!(short_number(100.0), "100");
        assert_eq!(short_number(2.5), "2.5");
        assert_eq!(short_number(1e-6), "1.00e-6");
        assert_eq!(integer_ticks(0.5, 4.5), vec![1.0, 2.0, 3.0, 4.0]);
    }
}
