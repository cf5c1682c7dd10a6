//! `dashgen`: writes Lantern's Grafana dashboards into the chart (`charts/lantern/dashboards/`),
//! or with `--check` exits 1 naming each file that differs from what the code builds.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(lantern_dashboards::CHART_DIR);
    let mut stale = false;
    for (file, dashboard) in lantern_dashboards::all() {
        let path = dir.join(file);
        let built = serde_json::to_string_pretty(&dashboard).expect("a JSON value serializes") + "\n";
        if check {
            // Compared as JSON: the order of keys depends on serde_json's features in the build.
            let checked_in: Option<serde_json::Value> =
                std::fs::read_to_string(&path).ok().and_then(|text| serde_json::from_str(&text).ok());
            if checked_in.as_ref() != Some(&dashboard) {
                eprintln!("{} differs from what lantern-dashboards builds", path.display());
                stale = true;
            }
            continue;
        }
        if let Err(error) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, built)) {
            eprintln!("writing {}: {error}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {}", path.display());
    }
    if stale { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
