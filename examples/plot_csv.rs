//! Plot measurements against length, one line per method, log-log, from a CSV (`x,y,method`; the
//! header line names the axes) into an SVG with the given title.
//!
//!   cargo run --release --example plot_csv -- docs/prefill_h200.csv docs/prefill_h200.svg "prefill time against prompt length"
//!   cargo run --release --example plot_csv -- docs/decode_h200.csv docs/decode_h200.svg "decode time per token against context length"

use plotters::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (input, output, title) = match &args[..] {
        [_, i, o, t] => (i.clone(), o.clone(), t.clone()),
        _ => return Err("usage: plot_csv INPUT.csv OUTPUT.svg TITLE".into()),
    };
    let text = std::fs::read_to_string(&input).map_err(|e| format!("{input}: {e}"))?;
    let header: Vec<&str> = text.lines().next().unwrap_or_default().split(',').map(str::trim).collect();
    let [x_name, y_name, _] = header[..] else { return Err(format!("{input}:1: want a header x,y,method").into()) };
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let [x, y, method] = f[..] else { return Err(format!("{input}:{}: want x,y,method", n + 1).into()) };
        let point = (x.parse::<f64>().map_err(|e| format!("{input}:{}: {e}", n + 1))?, y.parse::<f64>().map_err(|e| format!("{input}:{}: {e}", n + 1))?);
        match series.iter_mut().find(|(m, _)| m == method) {
            Some((_, v)) => v.push(point),
            None => series.push((method.to_string(), vec![point])),
        }
    }
    let xmin = series.iter().flat_map(|(_, v)| v.iter().map(|p| p.0)).fold(f64::MAX, f64::min) / 1.3;
    let xmax = series.iter().flat_map(|(_, v)| v.iter().map(|p| p.0)).fold(1.0, f64::max) * 1.3;
    let ymin = series.iter().flat_map(|(_, v)| v.iter().map(|p| p.1)).fold(f64::MAX, f64::min) / 1.5;
    let ymax = series.iter().flat_map(|(_, v)| v.iter().map(|p| p.1)).fold(0.0, f64::max) * 1.5;
    let root = SVGBackend::new(&output, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title.as_str(), ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d((xmin..xmax).log_scale(), (ymin..ymax).log_scale())?;
    chart.configure_mesh().x_desc(x_name).y_desc(y_name).draw()?;
    let colors = [BLUE, RED, GREEN, MAGENTA, BLACK];
    for (i, (method, pts)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        chart.draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?.label(method.as_str()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).position(SeriesLabelPosition::UpperLeft).draw()?;
    root.present()?;
    println!("wrote {output}");
    Ok(())
}
