//! A TrainingJob's curves in the terminal: the loss at the steps `status.history` kept (at most
//! 64, spread over the run) and at each version's step, drawn on a character grid ([`plot`],
//! pure), and every version's held-out metrics in a table. The full per-step curves are in each version (`curves/`, for
//! TensorBoard).

use kube::api::Api;
use lantern_operator::crd::TrainingJob;

const HEIGHT: usize = 12;

/// `points` (x, y) drawn on `width` × `height` characters, with the y range on the left and the
/// x range below.
pub fn plot(points: &[(f64, f64)], width: usize, height: usize) -> Vec<String> {
    let finite: Vec<(f64, f64)> = points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
    if finite.is_empty() || width < 2 || height < 2 {
        return vec!["  (no points yet)".to_owned()];
    }
    let range = |values: &mut dyn Iterator<Item = f64>| {
        values.fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), v| (low.min(v), high.max(v)))
    };
    let (x_low, x_high) = range(&mut finite.iter().map(|p| p.0));
    let (y_low, y_high) = range(&mut finite.iter().map(|p| p.1));
    let scale = |value: f64, low: f64, high: f64, cells: usize| match high > low {
        true => (((value - low) / (high - low)) * (cells - 1) as f64).round() as usize,
        false => 0,
    };
    let mut grid = vec![vec![' '; width]; height];
    for (x, y) in finite {
        let column = scale(x, x_low, x_high, width);
        let row = height - 1 - scale(y, y_low, y_high, height);
        grid[row][column] = '•';
    }
    let label = |value: f64| format!("{value:>9.4}");
    let mut lines: Vec<String> = grid
        .into_iter()
        .enumerate()
        .map(|(row, cells)| {
            let axis = match row {
                0 => format!("{} ┤", label(y_high)),
                r if r == height - 1 => format!("{} ┤", label(y_low)),
                _ => format!("{} │", " ".repeat(9)),
            };
            format!("{axis}{}", cells.into_iter().collect::<String>()).trim_end().to_owned()
        })
        .collect();
    lines.push(format!("{} └{}", " ".repeat(9), "─".repeat(width)));
    let (first, last) = (format!("{x_low}"), format!("{x_high}"));
    let gap = width.saturating_sub(first.len() + last.len());
    lines.push(format!("{}  {first}{}{last}", " ".repeat(9), " ".repeat(gap)));
    lines
}

/// Prints `job`'s loss curve and its versions' held-out metrics.
pub async fn curves(
    client: &kube::Client,
    namespace: &str,
    job: &str,
    width: usize,
) -> anyhow::Result<crate::status::Health> {
    let api: Api<TrainingJob> = Api::namespaced(client.clone(), namespace);
    let Some(training) = api.get_opt(job).await? else {
        anyhow::bail!("trainingjob {job:?} not found in namespace {namespace:?}")
    };
    let status = training.status.unwrap_or_default();
    let phase = status.phase.map_or("Pending", |p| p.as_str());
    match &status.progress {
        Some(p) => println!(
            "trainingjob {namespace}/{job}: {phase}, step {} of {} ({}%), loss {}",
            p.step,
            p.total_steps,
            p.percent,
            p.loss.map_or("-".to_owned(), |l| l.to_string())
        ),
        None => println!("trainingjob {namespace}/{job}: {phase}, no progress yet"),
    }
    // The operator's polls, and every version's training loss at its step.
    let mut loss: Vec<(f64, f64)> = status.history.iter().filter_map(|p| Some((p.step as f64, p.loss?))).collect();
    loss.extend(status.checkpoints.iter().filter_map(|c| Some((c.step as f64, *c.metrics.get("loss")?))));
    loss.sort_by(|a, b| a.0.total_cmp(&b.0));
    loss.dedup_by(|a, b| a.0 == b.0);
    println!("loss by step:");
    for line in plot(&loss, width, HEIGHT) {
        println!("{line}");
    }
    if status.checkpoints.is_empty() {
        return Ok(crate::status::Health::Healthy);
    }
    let mut names: Vec<&String> =
        status.checkpoints.iter().flat_map(|c| c.metrics.keys()).filter(|n| n.starts_with("eval_")).collect();
    names.sort();
    names.dedup();
    let header: Vec<String> = names.iter().map(|n| format!("{n:>15}")).collect();
    println!("versions:\n  version     step{}", header.concat());
    for checkpoint in &status.checkpoints {
        let values: Vec<String> = names
            .iter()
            .map(|n| checkpoint.metrics.get(*n).map_or(format!("{:>15}", "-"), |v| format!("{v:>15.4}")))
            .collect();
        let removed = if checkpoint.removed { "  (removed)" } else { "" };
        println!("  {:>7} {:>8}{}{removed}", checkpoint.version, checkpoint.step, values.concat());
    }
    Ok(crate::status::Health::Healthy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_falling_curve_starts_top_left_and_ends_bottom_right() {
        let points: Vec<(f64, f64)> = (1..=10).map(|step| (f64::from(step), 10.0 / f64::from(step))).collect();
        let lines = plot(&points, 20, 5);
        assert_eq!(lines.len(), 7);
        assert!(lines[0].starts_with("  10.0000 ┤•"), "{lines:#?}");
        assert!(lines[4].starts_with("   1.0000 ┤") && lines[4].ends_with('•'), "{lines:#?}");
        assert!(lines[6].trim_start().starts_with('1') && lines[6].ends_with("10"), "{lines:#?}");
        assert_eq!(plot(&[], 20, 5), ["  (no points yet)"]);
        assert_eq!(plot(&[(1.0, f64::NAN)], 20, 5), ["  (no points yet)"], "a non-finite loss is not drawn");
    }
}
