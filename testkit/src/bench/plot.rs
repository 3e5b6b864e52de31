//! The SVG plot for docs/benchmarks.md: multi-source speedup against the
//! ideal (left) and the flash crowd's last finisher against its lower bound
//! (right). Plain SVG text, no dependency.

use std::fmt::Write as _;
use std::path::Path;

use super::util::R;

#[derive(Debug, Default, Clone)]
pub struct PlotData {
    /// (N, measured speedup T(1)/T(N), ideal/actual)
    pub multi: Vec<(usize, f64, f64)>,
    /// (N, last finisher seconds, bound seconds)
    pub flash: Vec<(usize, f64, f64)>,
    /// (peers, medians) of the tracker-load scenario.
    pub tracker: Vec<(usize, super::tracker_load::Rep)>,
}

pub fn write_svg(path: &Path, d: &PlotData, quick: bool) -> R<()> {
    write_file(path, &render(d, quick))
}

/// Writes `svg` at `path`, creating its folder.
fn write_file(path: &Path, svg: &str) -> R<()> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    std::fs::write(path, svg).map_err(|e| format!("write {}: {e}", path.display()))
}

/// The opening of a `w` x `h` plot: the svg element, a white background
/// and, for a `--quick` run, a warning that it is not representative.
fn svg_start(w: f64, h: f64, quick: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    if quick {
        let _ = writeln!(
            s,
            r##"<text x="{}" y="16" text-anchor="middle" fill="#a00">--quick run: not representative</text>"##,
            w / 2.0
        );
    }
    s
}

fn render(d: &PlotData, quick: bool) -> String {
    let (w, h) = (880.0, 380.0);
    let mut s = svg_start(w, h, quick);
    speedup_panel(&mut s, &d.multi, 60.0, 40.0, 340.0, 280.0);
    flash_panel(&mut s, &d.flash, 510.0, 40.0, 340.0, 280.0);
    s.push_str("</svg>\n");
    s
}

/// A panel's frame: origin (x0, y0) top left, size (pw, ph), and labels.
struct Panel<'a> {
    x0: f64,
    y0: f64,
    pw: f64,
    ph: f64,
    title: &'a str,
    xl: &'a str,
    yl: &'a str,
}

fn axes(s: &mut String, p: &Panel<'_>) {
    let Panel {
        x0,
        y0,
        pw,
        ph,
        title,
        xl,
        yl,
    } = *p;
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="14" font-weight="bold">{title}</text>"#,
        x0 + pw / 2.0,
        y0 - 12.0
    );
    let _ = writeln!(
        s,
        r#"<line x1="{x0}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{x0}" y1="{y0}" x2="{x0}" y2="{}" stroke="black"/>"#,
        y0 + ph,
        x0 + pw,
        y0 + ph,
        y0 + ph
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{xl}</text>"#,
        x0 + pw / 2.0,
        y0 + ph + 34.0
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle" transform="rotate(-90 {} {})">{yl}</text>"#,
        x0 - 38.0,
        y0 + ph / 2.0,
        x0 - 38.0,
        y0 + ph / 2.0
    );
}

fn speedup_panel(s: &mut String, m: &[(usize, f64, f64)], x0: f64, y0: f64, pw: f64, ph: f64) {
    axes(
        s,
        &Panel {
            x0,
            y0,
            pw,
            ph,
            title: "Multi-source download, every source capped",
            xl: "sources N",
            yl: "speedup T(1) / T(N)",
        },
    );
    let ymax = 9.0;
    let xs = [1usize, 2, 4, 8];
    let px = |n: usize| x0 + pw * (n as f64 - 1.0) / 7.5 + 8.0;
    let py = |v: f64| y0 + ph - ph * (v / ymax).min(1.0);
    for v in [0.0, 2.0, 4.0, 6.0, 8.0] {
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{v}</text>"##,
            x0 + pw,
            x0 - 6.0,
            py(v) + 4.0,
            y = py(v)
        );
    }
    for n in xs {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{n}</text>"#,
            px(n),
            y0 + ph + 16.0
        );
    }
    // Ideal: speedup N.
    let ideal: Vec<String> = xs
        .iter()
        .map(|&n| format!("{:.1},{:.1}", px(n), py(n as f64)))
        .collect();
    let _ = writeln!(
        s,
        r##"<polyline points="{}" fill="none" stroke="#888" stroke-dasharray="6,4" stroke-width="2"/>"##,
        ideal.join(" ")
    );
    if !m.is_empty() {
        let pts: Vec<String> = m
            .iter()
            .map(|&(n, sp, _)| format!("{:.1},{:.1}", px(n), py(sp)))
            .collect();
        let _ = writeln!(
            s,
            r##"<polyline points="{}" fill="none" stroke="#1f6fb4" stroke-width="2.5"/>"##,
            pts.join(" ")
        );
        for &(n, sp, ratio) in m {
            let _ = writeln!(
                s,
                r##"<circle cx="{:.1}" cy="{:.1}" r="4" fill="#1f6fb4"/><text x="{:.1}" y="{:.1}" fill="#1f6fb4">{sp:.2}x ({ratio:.2} of ideal)</text>"##,
                px(n),
                py(sp),
                px(n) - if n == 8 { 120.0 } else { -8.0 },
                py(sp) + if n == 8 { 18.0 } else { -8.0 }
            );
        }
    }
    legend(
        s,
        x0 + 10.0,
        y0 + 10.0,
        &[
            ("#888", "ideal (N x cap)", true),
            ("#1f6fb4", "measured (median)", false),
        ],
    );
}

fn flash_panel(s: &mut String, f: &[(usize, f64, f64)], x0: f64, y0: f64, pw: f64, ph: f64) {
    axes(
        s,
        &Panel {
            x0,
            y0,
            pw,
            ph,
            title: "Flash crowd: last downloader done",
            xl: "downloaders N (one capped seed, capped peers)",
            yl: "seconds",
        },
    );
    let top = f.iter().map(|&(_, a, b)| a.max(b)).fold(1.0, f64::max) * 1.35;
    // A round tick step (1, 2 or 5 times a power of ten), about 4 ticks.
    let raw = top / 4.0;
    let pow = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * pow)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * pow);
    let ticks = (top / step).ceil() as usize;
    let ymax = step * ticks as f64;
    let py = |v: f64| y0 + ph - ph * (v / ymax);
    for k in 0..=ticks {
        let v = step * k as f64;
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{v:.0}</text>"##,
            x0 + pw,
            x0 - 6.0,
            py(v) + 4.0,
            y = py(v)
        );
    }
    let group = pw / f.len().max(1) as f64;
    for (i, &(n, actual, bound)) in f.iter().enumerate() {
        let gx = x0 + group * i as f64 + group * 0.2;
        let bw = group * 0.28;
        for (j, (v, color)) in [(bound, "#bbb"), (actual, "#1f6fb4")].iter().enumerate() {
            let x = gx + j as f64 * (bw + 4.0);
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{bw:.1}" height="{:.1}" fill="{color}"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{v:.1}</text>"#,
                py(*v),
                y0 + ph - py(*v),
                x + bw / 2.0,
                py(*v) - 4.0
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">N={n} ({:.2} of bound)</text>"#,
            gx + bw + 2.0,
            y0 + ph + 16.0,
            bound / actual
        );
    }
    legend(
        s,
        x0 + 10.0,
        y0 + 10.0,
        &[
            ("#bbb", "lower bound", false),
            ("#1f6fb4", "measured (median)", false),
        ],
    );
}

fn legend(s: &mut String, x: f64, y: f64, items: &[(&str, &str, bool)]) {
    for (i, (color, label, dashed)) in items.iter().enumerate() {
        let yy = y + 16.0 * i as f64;
        let dash = if *dashed {
            r#" stroke-dasharray="6,4""#
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<line x1="{x}" y1="{yy}" x2="{}" y2="{yy}" stroke="{color}" stroke-width="3"{dash}/><text x="{}" y="{}">{label}</text>"#,
            x + 22.0,
            x + 28.0,
            yy + 4.0
        );
    }
}

// ---- How cost grows with the number of peers (docs/benchmarks-scaling.svg) ----

/// Writes the scaling plot: the tracker's memory and CPU against connected
/// peers, and the flash crowd's bound / last finisher against downloaders.
pub fn write_scaling_svg(path: &Path, d: &PlotData, quick: bool) -> R<()> {
    write_file(path, &render_scaling(d, quick))
}

fn render_scaling(d: &PlotData, quick: bool) -> String {
    let (w, h) = (1180.0, 380.0);
    let mut s = svg_start(w, h, quick);
    let xs: Vec<String> = d.tracker.iter().map(|(n, _)| n.to_string()).collect();
    let mem: Vec<f64> = d
        .tracker
        .iter()
        .map(|(n, r)| r.rss_per_peer_kib * *n as f64 / 1024.0)
        .collect();
    let per: Vec<String> = d
        .tracker
        .iter()
        .map(|(_, r)| format!("{:.1} KiB/peer", r.rss_per_peer_kib))
        .collect();
    bars(
        &mut s,
        &Panel {
            x0: 60.0,
            y0: 40.0,
            pw: 300.0,
            ph: 280.0,
            title: "Tracker memory (RSS above empty)",
            xl: "connected peers",
            yl: "MiB",
        },
        &xs,
        &[("#1f6fb4", &mem)],
        &per,
        None,
    );
    let cpu: Vec<f64> = d.tracker.iter().map(|(_, r)| r.paced_cpu_pct).collect();
    let lab: Vec<String> = d
        .tracker
        .iter()
        .map(|(_, r)| format!("Locate p99 {:.1} ms", r.p99_ms))
        .collect();
    bars(
        &mut s,
        &Panel {
            x0: 450.0,
            y0: 40.0,
            pw: 300.0,
            ph: 280.0,
            title: "Tracker CPU, 1 chunk register/s per peer",
            xl: "connected peers",
            yl: "% of one core",
        },
        &xs,
        &[("#1f6fb4", &cpu)],
        &lab,
        Some((
            "#555",
            "plus 100 Locates/s of a file every peer holds (p99 above)",
        )),
    );
    let fx: Vec<String> = d.flash.iter().map(|(n, _, _)| format!("N={n}")).collect();
    let bound: Vec<f64> = d.flash.iter().map(|&(_, _, b)| b).collect();
    let last: Vec<f64> = d.flash.iter().map(|&(_, a, _)| a).collect();
    let fl: Vec<String> = d
        .flash
        .iter()
        .map(|&(_, a, b)| format!("{:.2} of bound", b / a))
        .collect();
    bars(
        &mut s,
        &Panel {
            x0: 840.0,
            y0: 40.0,
            pw: 300.0,
            ph: 280.0,
            title: "Flash crowd: last finisher against bound",
            xl: "downloaders (one capped seed)",
            yl: "seconds",
        },
        &fx,
        &[("#bbb", &bound), ("#1f6fb4", &last)],
        &fl,
        Some(("#555", "grey: bound F/U; blue: last finisher (median)")),
    );
    s.push_str("</svg>\n");
    s
}

/// Grouped bars: one group per x label, one bar per series, the group's
/// note under its bars' values, an optional legend line.
fn bars(
    s: &mut String,
    p: &Panel<'_>,
    xs: &[String],
    series: &[(&str, &[f64])],
    notes: &[String],
    legend_line: Option<(&str, &str)>,
) {
    axes(s, p);
    let top = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.25;
    let raw = top / 4.0;
    let pow = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * pow)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * pow);
    let ticks = (top / step).ceil() as usize;
    let ymax = step * ticks as f64;
    let py = |v: f64| p.y0 + p.ph - p.ph * (v / ymax);
    for k in 0..=ticks {
        let v = step * k as f64;
        let _ = writeln!(
            s,
            r##"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            p.x0,
            p.x0 + p.pw,
            p.x0 - 6.0,
            py(v) + 4.0,
            if step < 1.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.0}")
            },
            y = py(v)
        );
    }
    let group = p.pw / xs.len().max(1) as f64;
    let bw = group * 0.6 / series.len().max(1) as f64;
    for (i, x) in xs.iter().enumerate() {
        let gx = p.x0 + group * i as f64 + group * 0.2;
        for (j, (color, v)) in series.iter().enumerate() {
            let Some(&v) = v.get(i) else { continue };
            let bx = gx + j as f64 * bw;
            let _ = writeln!(
                s,
                r#"<rect x="{bx:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"/><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="11">{}</text>"#,
                py(v),
                bw - 2.0,
                p.y0 + p.ph - py(v),
                bx + bw / 2.0,
                py(v) - 4.0,
                if v < 10.0 {
                    format!("{v:.2}")
                } else {
                    format!("{v:.0}")
                }
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{x}</text>"#,
            gx + group * 0.3,
            p.y0 + p.ph + 16.0
        );
        if let Some(n) = notes.get(i) {
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{}" text-anchor="middle" font-size="10" fill="#555">{n}</text>"##,
                gx + group * 0.3,
                p.y0 + 14.0 + 12.0 * (i % 2) as f64
            );
        }
    }
    if let Some((color, text)) = legend_line {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-size="10" fill="{color}">{text}</text>"#,
            p.x0 + 4.0,
            p.y0 + p.ph + 48.0
        );
    }
}
