//! Metrics exposition. The `prometheus-client` crate writes OpenMetrics text; a scraper that asks
//! for it (`Accept: application/openmetrics-text`, as Prometheus does) gets it as is, and any
//! other (promtool, curl, older scrapers) gets the Prometheus text format 0.0.4: there a
//! counter's `HELP` and `TYPE` name its `_total` series, `unknown` is `untyped`, and there is no
//! `# UNIT` or `# EOF` line. Serving OpenMetrics as `text/plain; version=0.0.4` would make
//! Prometheus read every counter as untyped.

/// OpenMetrics' content type.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The Prometheus text format's content type.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The content type and body to answer a scrape whose `Accept` header is `accept`, from
/// `openmetrics` (what `prometheus_client::encoding::text::encode` wrote).
pub fn negotiate(accept: Option<&str>, openmetrics: String) -> (&'static str, String) {
    match accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
        true => (OPENMETRICS, openmetrics),
        false => (PROMETHEUS_TEXT, prometheus_text(&openmetrics)),
    }
}

/// `openmetrics` in the Prometheus text format 0.0.4.
pub fn prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // A family's HELP comes before its TYPE, which decides the name both carry.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = rest.split_once(' ').or(Some((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (name, kind) = match kind {
                "counter" => (format!("{family}_total"), "counter"),
                "gauge" | "histogram" | "summary" => (family.to_owned(), kind),
                "info" => (format!("{family}_info"), "gauge"),
                _ => (family.to_owned(), "untyped"),
            };
            if let Some((_, text)) = help.take().filter(|(named, _)| *named == family) {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENMETRICS_TEXT: &str = "# HELP lantern_requests Inference requests.
# TYPE lantern_requests counter
lantern_requests_total{code=\"OK\"} 3
# HELP lantern_up Whether it runs.
# TYPE lantern_up gauge
# UNIT lantern_up seconds
lantern_up 1
# HELP lantern_build Build.
# TYPE lantern_build info
lantern_build_info{version=\"1\"} 1
# TYPE lantern_odd unknown
lantern_odd 2
# EOF
";

    #[test]
    fn counters_name_their_total_series_and_openmetrics_only_lines_go() {
        assert_eq!(
            prometheus_text(OPENMETRICS_TEXT),
            "# HELP lantern_requests_total Inference requests.
# TYPE lantern_requests_total counter
lantern_requests_total{code=\"OK\"} 3
# HELP lantern_up Whether it runs.
# TYPE lantern_up gauge
lantern_up 1
# HELP lantern_build_info Build.
# TYPE lantern_build_info gauge
lantern_build_info{version=\"1\"} 1
# TYPE lantern_odd untyped
lantern_odd 2
"
        );
    }

    #[test]
    fn a_scraper_that_asks_for_openmetrics_gets_it() {
        let (kind, body) =
            negotiate(Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"), OPENMETRICS_TEXT.into());
        assert_eq!((kind, body.as_str()), (OPENMETRICS, OPENMETRICS_TEXT));
        assert_eq!(negotiate(None, OPENMETRICS_TEXT.into()).0, PROMETHEUS_TEXT);
        assert_eq!(negotiate(Some("*/*"), OPENMETRICS_TEXT.into()).0, PROMETHEUS_TEXT);
    }
}
