//! Charts as inline SVG, drawn on the server: readable without script, with a title and
//! the numbers as text for screen readers. Every label is escaped here (the markup is
//! inserted into the page as is).

use std::fmt::Write as _;

/// Escapes text for SVG/HTML content and attributes.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const W: f64 = 560.0;
const H: f64 = 180.0;
const LEFT: f64 = 36.0;
const BOTTOM: f64 = 22.0;
/// Bar charts sit in narrower cards: a smaller canvas keeps their text readable.
const BAR_W: f64 = 400.0;

fn open(out: &mut String, title: &str, width: f64, height: f64) {
    open_as(out, title, width, height, "img");
}

/// A chart whose labels are links is a `group` (an `img` may hold nothing interactive).
fn open_as(out: &mut String, title: &str, width: f64, height: f64, role: &str) {
    let _ = write!(
        out,
        r#"<svg viewBox="0 0 {width} {height}" width="100%" role="{role}" aria-label="{t}" xmlns="http://www.w3.org/2000/svg"><title>{t}</title>"#,
        t = esc(title)
    );
}

/// A round upper bound for the y axis.
fn nice_max(max: u64) -> u64 {
    let max = max.max(1);
    let magnitude = 10u64.pow(max.ilog10());
    let step = [1, 2, 5, 10].into_iter().map(|m| m * magnitude).find(|s| max <= *s).unwrap_or(max);
    if max <= step { step } else { max }
}

fn axis(out: &mut String, top: u64) {
    let plot_h = H - BOTTOM - 8.0;
    for frac in [0.0, 0.5, 1.0] {
        let y = 8.0 + plot_h * (1.0 - frac);
        let v = (top as f64 * frac).round() as u64;
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" x2="{W}" y1="{y:.1}" y2="{y:.1}" stroke="#d0d7de"/><text x="{x:.1}" y="{ty:.1}" text-anchor="end">{v}</text>"##,
            x = LEFT - 4.0,
            ty = y + 4.0
        );
    }
}

/// One series per week: `(label, values…)` drawn as grouped columns in `colors`.
pub(crate) fn columns(title: &str, legend: &[&str], colors: &[&str], rows: &[(String, Vec<u64>)]) -> String {
    let mut out = String::new();
    open(&mut out, title, W, H);
    let top = nice_max(rows.iter().flat_map(|(_, vs)| vs.iter().copied()).max().unwrap_or(0));
    axis(&mut out, top);
    let plot_h = H - BOTTOM - 8.0;
    let slot = (W - LEFT) / rows.len().max(1) as f64;
    let series = colors.len().max(1) as f64;
    let bar = (slot * 0.8 / series).max(1.0);
    for (idx, (label, values)) in rows.iter().enumerate() {
        let x0 = LEFT + slot * idx as f64 + slot * 0.1;
        for (s, (value, color)) in values.iter().zip(colors).enumerate() {
            let h = plot_h * (*value as f64) / top as f64;
            let parts: Vec<String> =
                legend.iter().zip(values).map(|(name, v)| format!("{name} {v}")).collect::<Vec<_>>();
            let _ = write!(
                out,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{bar:.1}" height="{h:.1}" fill="{color}"><title>{t}</title></rect>"#,
                x = x0 + bar * s as f64,
                y = 8.0 + plot_h - h,
                t = esc(&format!("week ending {label}: {}", parts.join(", ")))
            );
        }
        // A date under every fourth week, and the last.
        if idx % 4 == 0 || idx + 1 == rows.len() {
            let _ = write!(
                out,
                r#"<text x="{x:.1}" y="{y:.1}" text-anchor="middle">{l}</text>"#,
                x = x0 + slot * 0.4,
                y = H - 6.0,
                l = esc(label)
            );
        }
    }
    out.push_str("</svg>");
    out
}

/// Horizontal bars, largest first as given: `(label, count, link)`.
pub(crate) fn bars(title: &str, color: &str, rows: &[(String, u64, Option<String>)]) -> String {
    let row_h = 22.0;
    let height = (rows.len().max(1) as f64) * row_h + 4.0;
    let mut out = String::new();
    let role = if rows.iter().any(|(_, _, link)| link.is_some()) { "group" } else { "img" };
    open_as(&mut out, title, BAR_W, height, role);
    if rows.is_empty() {
        out.push_str(r#"<text x="4" y="16">nothing to show</text>"#);
    }
    let max = rows.iter().map(|(_, n, _)| *n).max().unwrap_or(1).max(1) as f64;
    let label_w = 170.0;
    let room = BAR_W - label_w - 40.0;
    for (idx, (label, n, link)) in rows.iter().enumerate() {
        let y = idx as f64 * row_h + 2.0;
        let w = (room * (*n as f64) / max).max(2.0);
        let shown: String = if label.chars().count() > 28 {
            format!("{}…", label.chars().take(27).collect::<String>())
        } else {
            label.clone()
        };
        let text = format!(
            r#"<text x="{x:.1}" y="{ty:.1}" text-anchor="end">{l}</text>"#,
            x = label_w - 6.0,
            ty = y + 15.0,
            l = esc(&shown)
        );
        match link {
            Some(href) => {
                let _ = write!(out, r#"<a href="{}">{text}</a>"#, esc(href));
            }
            None => out.push_str(&text),
        }
        let _ = write!(
            out,
            r#"<rect x="{label_w}" y="{ry:.1}" width="{w:.1}" height="16" fill="{color}"><title>{t}</title></rect><text x="{nx:.1}" y="{ty:.1}">{n}</text>"#,
            ry = y + 2.0,
            t = esc(&format!("{label}: {n}")),
            nx = label_w + w + 6.0,
            ty = y + 15.0
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_every_value_is_drawn() {
        let svg = bars("Top", "#000", &[("<script>".into(), 3, None), ("b&c".into(), 1, Some("/ui/x?a=1&b=2".into()))]);
        assert!(!svg.contains("<script>"));
        assert!(svg.contains("&lt;script&gt;") && svg.contains("b&amp;c") && svg.contains("a=1&amp;b=2"));
        assert_eq!(svg.matches("<rect").count(), 2);
        let weeks: Vec<(String, Vec<u64>)> = (0..8).map(|w| (format!("w{w}"), vec![w, 8 - w])).collect();
        let svg = columns("Opened and closed", &["opened", "closed"], &["#1", "#2"], &weeks);
        assert_eq!(svg.matches("<rect").count(), 16);
        assert!(svg.contains("week ending w3: opened 3, closed 5"));
        assert_eq!(nice_max(0), 1);
        assert_eq!(nice_max(37), 50);
        assert_eq!(nice_max(100), 100);
    }
}
