//! The parts of Grafana's dashboard JSON (schema 39) the dashboards use: time-series panels of
//! Prometheus queries on a grid, query variables and query annotations, all reading the data
//! source the `datasource` variable picks.

use serde_json::{Value, json};

/// The data source every query reads.
fn datasource() -> Value {
    json!({"type": "prometheus", "uid": "${datasource}"})
}

/// One query of a panel and the legend of its series.
pub struct Query {
    pub expr: String,
    pub legend: String,
}

/// `expr` with `legend` (Grafana's `{{label}}` templates).
pub fn query(expr: impl Into<String>, legend: impl Into<String>) -> Query {
    Query { expr: expr.into(), legend: legend.into() }
}

/// A time-series panel.
pub struct Panel {
    pub title: &'static str,
    pub description: &'static str,
    /// Grafana's unit id (`reqps`, `s`, `percentunit`, `short`, …).
    pub unit: &'static str,
    pub queries: Vec<Query>,
}

/// A variable whose values are one label's values on one metric.
pub struct Variable {
    pub name: &'static str,
    pub label: &'static str,
    pub metric: &'static str,
}

/// Events drawn on every panel where `expr` has a value.
pub struct Annotation {
    pub name: &'static str,
    pub expr: String,
    /// The text shown, from the series' labels.
    pub title: &'static str,
}

/// A dashboard of `panels`, two to a row.
pub fn dashboard(
    uid: &str,
    title: &str,
    variables: &[Variable],
    annotations: &[Annotation],
    panels: &[Panel],
) -> Value {
    let mut list = vec![json!({
        "name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
        "current": {}, "hide": 0,
    })];
    list.extend(variables.iter().map(|v| {
        let definition = format!("label_values({}, {})", v.metric, v.label);
        json!({
            "name": v.name, "label": v.label, "type": "query", "datasource": datasource(),
            "definition": definition, "query": {"query": definition, "refId": v.name},
            "includeAll": true, "multi": true, "allValue": ".*", "refresh": 2, "current": {}, "hide": 0,
        })
    }));
    let annotations: Vec<Value> = annotations
        .iter()
        .map(|a| {
            json!({
                "name": a.name, "datasource": datasource(), "enable": true, "iconColor": "orange",
                "expr": a.expr, "titleFormat": a.title, "step": "30s", "useValueForTime": false,
            })
        })
        .collect();
    let panels: Vec<Value> = panels
        .iter()
        .enumerate()
        .map(|(index, panel)| {
            let targets: Vec<Value> = panel
                .queries
                .iter()
                .enumerate()
                .map(|(i, q)| {
                    let ref_id = char::from(b'A' + i as u8).to_string();
                    json!({"refId": ref_id, "datasource": datasource(), "expr": q.expr, "legendFormat": q.legend})
                })
                .collect();
            json!({
                "id": index + 1,
                "type": "timeseries",
                "title": panel.title,
                "description": panel.description,
                "datasource": datasource(),
                "gridPos": {"h": 8, "w": 12, "x": (index % 2) * 12, "y": (index / 2) * 8},
                "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
                "targets": targets,
            })
        })
        .collect();
    json!({
        "uid": uid,
        "title": title,
        "tags": ["lantern"],
        "schemaVersion": 39,
        "version": 1,
        "editable": true,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": list},
        "annotations": {"list": annotations},
        "panels": panels,
    })
}

/// Every Prometheus expression in `dashboard`: its panels' queries, its annotations', and each
/// query variable's metric (the selector of `label_values(METRIC, LABEL)`).
pub fn expressions(dashboard: &Value) -> Vec<String> {
    let panels = dashboard["panels"].as_array().into_iter().flatten();
    let targets = panels.flat_map(|p| p["targets"].as_array().into_iter().flatten()).map(|t| &t["expr"]);
    let annotations = dashboard["annotations"]["list"].as_array().into_iter().flatten().map(|a| &a["expr"]);
    let mut found: Vec<String> = targets.chain(annotations).filter_map(|e| e.as_str().map(str::to_owned)).collect();
    let variables = dashboard["templating"]["list"].as_array().into_iter().flatten();
    found.extend(variables.filter_map(|v| {
        let definition = v["definition"].as_str()?;
        let inner = definition.strip_prefix("label_values(")?.strip_suffix(')')?;
        Some(inner.split(',').next()?.trim().to_owned())
    }));
    found
}
