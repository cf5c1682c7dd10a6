//! `crdgen [DIR]`: writes each CustomResourceDefinition as YAML into DIR (default: both `crds/`
//! and the Helm chart's `charts/lantern/crds/`), or with `-` prints them all to stdout.

use std::path::PathBuf;

use anyhow::Context;
use lantern_operator::crd;

fn main() -> anyhow::Result<()> {
    let targets = match std::env::args().nth(1) {
        Some(target) => vec![target],
        None => crd::DIRECTORIES.iter().map(|d| d.to_string()).collect(),
    };
    for (file, definition) in crd::definitions() {
        let yaml = crd::to_yaml(&definition)?;
        for target in &targets {
            if target == "-" {
                print!("---\n{yaml}");
                continue;
            }
            let path = PathBuf::from(target).join(file);
            std::fs::create_dir_all(target).with_context(|| format!("creating {target}"))?;
            std::fs::write(&path, &yaml).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}
