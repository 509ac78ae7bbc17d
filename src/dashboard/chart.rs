//! Charts drawn on the server as SVG by plotters: stacked monthly bars (MRR movements,
//! recognized revenue, receivables) and lines (MRR, balances). Amounts arrive as `Decimal` and
//! become `f64` here only as pixel geometry; every figure a reader sees is printed from the
//! decimal in a table beside the chart.

use plotters::prelude::*;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

/// Chart size in SVG user units; the page scales it to its width (`viewBox`).
pub const WIDTH_PX: u32 = 880;
pub const HEIGHT_PX: u32 = 300;

/// One named series of values, one per category, drawn in `color` (RGB).
pub struct Series {
    pub name: String,
    pub color: (u8, u8, u8),
    pub values: Vec<Decimal>,
}

fn f(d: Decimal) -> f64 {
    d.to_f64().unwrap_or(0.0)
}

/// (lowest, highest) of what the chart shows, with room around it and zero included.
fn range(lo: f64, hi: f64) -> (f64, f64) {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let pad = ((hi - lo) * 0.08).max(1.0);
    (if lo < 0.0 { lo - pad } else { 0.0 }, hi + pad)
}

/// Bars stacked per category: positive values upwards from zero, negative downwards.
pub fn stacked_bars(title: &str, categories: &[String], series: &[Series]) -> String {
    let n = categories.len();
    let mut top = vec![0.0f64; n];
    let mut bottom = vec![0.0f64; n];
    for s in series {
        for (i, v) in s.values.iter().enumerate().take(n) {
            let v = f(*v);
            if v >= 0.0 {
                top[i] += v;
            } else {
                bottom[i] += v;
            }
        }
    }
    let lo = bottom.iter().copied().fold(0.0, f64::min);
    let hi = top.iter().copied().fold(0.0, f64::max);
    draw(title, categories, range(lo, hi), |chart| {
        let mut up = vec![0.0f64; n];
        let mut down = vec![0.0f64; n];
        for s in series {
            let color = RGBColor(s.color.0, s.color.1, s.color.2);
            let bars = s.values.iter().enumerate().take(n).map(|(i, v)| {
                let v = f(*v);
                let (from, to) = if v >= 0.0 {
                    let from = up[i];
                    up[i] += v;
                    (from, up[i])
                } else {
                    let from = down[i];
                    down[i] += v;
                    (from, down[i])
                };
                let x = i as f64;
                Rectangle::new([(x - 0.35, from), (x + 0.35, to)], color.filled())
            });
            chart.draw_series(bars)?.label(s.name.clone()).legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
            });
        }
        Ok(())
    })
}

/// One line per series over the categories.
pub fn lines(title: &str, categories: &[String], series: &[Series]) -> String {
    let values = series.iter().flat_map(|s| s.values.iter().map(|v| f(*v)));
    let (lo, hi) = values.fold((0.0f64, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    draw(title, categories, range(lo, hi), |chart| {
        for s in series {
            let color = RGBColor(s.color.0, s.color.1, s.color.2);
            let points = s.values.iter().enumerate().map(|(i, v)| (i as f64, f(*v)));
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(s.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 12, y)], color.stroke_width(2))
                });
        }
        Ok(())
    })
}

type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

fn draw(
    title: &str,
    categories: &[String],
    (lo, hi): (f64, f64),
    body: impl FnOnce(&mut Chart<'_, '_>) -> Result<(), DrawingAreaErrorKind<std::io::Error>>,
) -> String {
    let mut svg = String::new();
    let drawn = (|| {
        let root = SVGBackend::with_string(&mut svg, (WIDTH_PX, HEIGHT_PX)).into_drawing_area();
        root.fill(&WHITE)?;
        let n = categories.len().max(1);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(72)
            // Category i is centred on x = i.
            .build_cartesian_2d(-0.5f64..n as f64 - 0.5, lo..hi)?;
        let step = n.div_ceil(12).max(1);
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&|x| {
                let i = x.round();
                match categories.get(i.max(0.0) as usize) {
                    Some(c) if (i as usize) % step == 0 && (x - i).abs() < 1e-6 => c.clone(),
                    _ => String::new(),
                }
            })
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;
        body(&mut chart)?;
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
        root.present()?;
        Ok::<(), DrawingAreaErrorKind<std::io::Error>>(())
    })();
    match drawn {
        Ok(()) => svg,
        Err(e) => format!("<p class=\"error\">chart not drawn: {e}</p>"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(n: i64) -> Decimal {
        Decimal::from(n)
    }

    fn months() -> Vec<String> {
        ["2025-01", "2025-02", "2025-03"].map(String::from).to_vec()
    }

    #[test]
    fn charts_are_svg_with_their_labels() {
        let series = vec![
            Series {
                name: "new".into(),
                color: (40, 120, 200),
                values: vec![dec(10), dec(0), dec(5)],
            },
            Series {
                name: "churn".into(),
                color: (200, 60, 60),
                values: vec![dec(0), dec(-4), dec(-1)],
            },
        ];
        for svg in [stacked_bars("Movements", &months(), &series), lines("MRR", &months(), &series)]
        {
            assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
            assert!(svg.contains("2025-02") && svg.contains("churn"), "labels drawn");
        }
        let empty = stacked_bars("Nothing", &[], &[]);
        assert!(empty.starts_with("<svg"), "an empty chart is still a chart");
    }
}
