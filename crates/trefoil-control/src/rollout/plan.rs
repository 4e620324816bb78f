//! The rollout state machine: from a Rollout's spec, its recorded status, the
//! time and the latest check, the next status and the events that explain
//! it. Pure, so every transition is tested without processes or clocks.

use trefoil_model::spec::{CanaryStep, CheckRecord, Figure, RolloutPhase, RolloutSpec, RolloutStatusSpec, Strategy, Verdict};

/// Where the canary's traffic should be, as the Route must express it.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Traffic {
    /// This percentage of all requests to the canary, the rest to stable.
    Weighted(u32),
    /// Requests matching the A/B condition to the canary, the rest to stable.
    AbTest,
    /// Everything to stable, with copies to the canary.
    Mirror,
}

/// A transition worth an `Event`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Note {
    pub reason: &'static str,
    pub message: String,
    pub figures: Vec<Figure>,
}

fn note(reason: &'static str, message: String) -> Note {
    Note { reason, message, figures: Vec::new() }
}

/// What the Route should say for this status.
pub(super) fn traffic(spec: &RolloutSpec, status: &RolloutStatusSpec) -> Traffic {
    match status.phase {
        RolloutPhase::Succeeded => Traffic::Weighted(100),
        RolloutPhase::RolledBack | RolloutPhase::Aborted => Traffic::Weighted(0),
        RolloutPhase::Progressing | RolloutPhase::Paused => match &spec.strategy {
            Strategy::Canary(_) => Traffic::Weighted(status.weight),
            Strategy::AbTest(_) => Traffic::AbTest,
            Strategy::Mirror(_) => Traffic::Mirror,
            Strategy::BlueGreen(_) => Traffic::Weighted(100),
        },
    }
}

/// Whether the canary receives requests now, so a check can judge it.
pub(super) fn canary_has_traffic(spec: &RolloutSpec, status: &RolloutStatusSpec) -> bool {
    status.phase == RolloutPhase::Progressing && traffic(spec, status) != Traffic::Weighted(0)
}

/// Whether the canary has not been sent any traffic yet in this rollout.
pub(super) fn before_traffic(status: &RolloutStatusSpec) -> bool {
    status.phase == RolloutPhase::Progressing
        && status.step == 0
        && status.weight == 0
        && status.last_check_ms == 0
        && status.last_check.is_none()
}

/// A fresh status for a new (or changed) rollout.
pub(super) fn start(generation: u64, now_ms: u64) -> (RolloutStatusSpec, Note) {
    let status =
        RolloutStatusSpec { observed_generation: generation, step_started_ms: now_ms, message: "started".into(), ..Default::default() };
    (status, note("Started", format!("rollout started (generation {generation})")))
}

/// Counts a check's verdict; rolls back once failures reach the threshold.
pub(super) fn record_check(spec: &RolloutSpec, status: &mut RolloutStatusSpec, check: CheckRecord, now_ms: u64) -> Vec<Note> {
    status.last_check_ms = now_ms;
    let mut notes = Vec::new();
    match check.verdict {
        Verdict::Passed => status.passed_checks += 1,
        Verdict::Inconclusive => {}
        Verdict::Failed => {
            status.failed_checks += 1;
            status.passed_checks = 0;
            let threshold = spec.analysis.as_ref().map_or(1, |a| a.threshold);
            let message = format!("check failed ({} of {threshold}): {}", status.failed_checks, describe(&check.figures));
            status.message = message.clone();
            notes.push(Note { reason: "CheckFailed", message, figures: check.figures.clone() });
            if status.failed_checks >= threshold {
                status.phase = RolloutPhase::RolledBack;
                status.weight = 0;
                status.message = format!("rolled back after {} failed checks", status.failed_checks);
                notes.push(Note {
                    reason: "RolledBack",
                    message: format!("{}; all traffic back to {}", status.message, spec.stable),
                    figures: check.figures.clone(),
                });
            }
        }
    }
    status.last_check = Some(check);
    notes
}

/// Runs the steps that can run now: weight changes, finished pauses, passed
/// analysis gates, and promotion after the last step.
pub(super) fn advance(spec: &RolloutSpec, status: &mut RolloutStatusSpec, now_ms: u64) -> Vec<Note> {
    let mut notes = Vec::new();
    if status.phase != RolloutPhase::Progressing {
        return notes;
    }
    match &spec.strategy {
        Strategy::Canary(c) => {
            while let Some(step) = c.steps.get(status.step) {
                match step {
                    CanaryStep::SetWeight(w) => {
                        if *w != status.weight {
                            notes.push(note("WeightChanged", format!("{}% of requests to {} (was {}%)", w, spec.canary, status.weight)));
                            status.weight = *w;
                        }
                    }
                    CanaryStep::Pause(d) => {
                        if now_ms.saturating_sub(status.step_started_ms) < d.get().as_millis() as u64 {
                            break;
                        }
                    }
                    CanaryStep::Analysis(a) => {
                        if status.passed_checks < a.checks {
                            break;
                        }
                        let figures = status.last_check.as_ref().map(|c| c.figures.clone()).unwrap_or_default();
                        notes.push(Note {
                            reason: "AnalysisPassed",
                            message: format!("{} checks in a row passed at {}%", status.passed_checks, status.weight),
                            figures,
                        });
                    }
                }
                status.step += 1;
                status.step_started_ms = now_ms;
                status.passed_checks = 0;
            }
            if status.step >= c.steps.len() {
                promote(spec, status, &mut notes, "all steps done");
            }
        }
        Strategy::AbTest(s) => promote_after(spec, status, s.checks, &mut notes),
        Strategy::Mirror(s) => promote_after(spec, status, s.checks, &mut notes),
        Strategy::BlueGreen(s) => promote_after(spec, status, s.checks, &mut notes),
    }
    if let Some(last) = notes.last() {
        status.message = last.message.clone();
    }
    notes
}

fn promote_after(spec: &RolloutSpec, status: &mut RolloutStatusSpec, checks: u32, notes: &mut Vec<Note>) {
    if status.passed_checks >= checks {
        let why = format!("{} checks in a row passed", status.passed_checks);
        let figures = status.last_check.as_ref().map(|c| c.figures.clone()).unwrap_or_default();
        promote(spec, status, notes, &why);
        if let Some(n) = notes.last_mut() {
            n.figures = figures;
        }
    }
}

fn promote(spec: &RolloutSpec, status: &mut RolloutStatusSpec, notes: &mut Vec<Note>, why: &str) {
    status.phase = RolloutPhase::Succeeded;
    status.weight = 100;
    notes.push(note("Promoted", format!("{why}: all traffic to {}", spec.canary)));
}

/// A manual action on a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Promote,
    Abort,
    Pause,
    Resume,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "promote" => Some(Action::Promote),
            "abort" => Some(Action::Abort),
            "pause" => Some(Action::Pause),
            "resume" => Some(Action::Resume),
            _ => None,
        }
    }
}

/// Why a manual action does not apply.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot {action:?} a rollout that is {phase:?}")]
pub struct NotApplicable {
    pub action: Action,
    pub phase: RolloutPhase,
}

/// Applies a manual action.
pub(super) fn act(spec: &RolloutSpec, status: &mut RolloutStatusSpec, action: Action, now_ms: u64) -> Result<Note, NotApplicable> {
    let refuse = NotApplicable { action, phase: status.phase };
    let n = match (action, status.phase) {
        (_, phase) if phase.is_final() => return Err(refuse),
        (Action::Pause, RolloutPhase::Progressing) => {
            status.phase = RolloutPhase::Paused;
            note("Paused", format!("paused by hand at {}% to {}", status.weight, spec.canary))
        }
        (Action::Resume, RolloutPhase::Paused) => {
            status.phase = RolloutPhase::Progressing;
            // A pause step counts from the resume: the time paused was not observed.
            status.step_started_ms = now_ms;
            note("Resumed", "resumed by hand".into())
        }
        (Action::Pause | Action::Resume, _) => return Err(refuse),
        (Action::Promote, _) => {
            let mut notes = Vec::new();
            promote(spec, status, &mut notes, "promoted by hand");
            notes.remove(0)
        }
        (Action::Abort, _) => {
            status.phase = RolloutPhase::Aborted;
            status.weight = 0;
            note("Aborted", format!("aborted by hand: all traffic back to {}", spec.stable))
        }
    };
    status.message = n.message.clone();
    Ok(n)
}

/// Figures as one line: `successRate=50.00 (min 99) latencyP99=0.31 (max 0.25)`.
pub(super) fn describe(figures: &[Figure]) -> String {
    let parts: Vec<String> = figures
        .iter()
        .map(|f| {
            let value = f.value.map_or_else(|| "n/a".to_string(), |v| format!("{v:.3}"));
            let mut bounds = Vec::new();
            if let Some(min) = f.min {
                bounds.push(format!("min {min}"));
            }
            if let Some(max) = f.max {
                bounds.push(format!("max {max}"));
            }
            format!("{}={value} ({}){}", f.metric, bounds.join(", "), if f.ok { "" } else { " FAILED" })
        })
        .collect();
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use trefoil_model::spec::{Analysis, AnalysisMetric, AnalysisStep, CanaryStrategy, JudgedStrategy, MinBound};
    use trefoil_model::Duration;

    fn spec(strategy: Strategy) -> RolloutSpec {
        RolloutSpec {
            service: "web".into(),
            stable: "v1".into(),
            canary: "v2".into(),
            route: "web".into(),
            strategy,
            analysis: Some(Analysis {
                interval: Duration::from_secs(1),
                threshold: 2,
                min_requests: 10,
                metrics: vec![AnalysisMetric::SuccessRate(MinBound { min: 99.0 })],
            }),
        }
    }

    fn canary() -> RolloutSpec {
        spec(Strategy::Canary(CanaryStrategy {
            steps: vec![
                CanaryStep::SetWeight(20),
                CanaryStep::Analysis(AnalysisStep { checks: 2 }),
                CanaryStep::Pause(Duration::from_secs(5)),
                CanaryStep::SetWeight(50),
            ],
        }))
    }

    fn check(verdict: Verdict) -> CheckRecord {
        CheckRecord {
            verdict,
            requests: 100.0,
            figures: vec![Figure {
                metric: "successRate".into(),
                value: Some(50.0),
                min: Some(99.0),
                max: None,
                ok: verdict != Verdict::Failed,
            }],
        }
    }

    #[test]
    fn a_healthy_canary_walks_its_steps_and_is_promoted() {
        let spec = canary();
        let (mut s, started) = start(1, 0);
        assert_eq!(started.reason, "Started");
        let notes = advance(&spec, &mut s, 0);
        assert_eq!((s.weight, s.step, notes[0].reason), (20, 1, "WeightChanged"));
        assert_eq!(traffic(&spec, &s), Traffic::Weighted(20));
        // The analysis gate holds until two checks in a row pass.
        record_check(&spec, &mut s, check(Verdict::Passed), 1000);
        assert!(advance(&spec, &mut s, 1000).is_empty());
        record_check(&spec, &mut s, check(Verdict::Inconclusive), 2000);
        record_check(&spec, &mut s, check(Verdict::Passed), 3000);
        let notes = advance(&spec, &mut s, 3000);
        assert_eq!(notes[0].reason, "AnalysisPassed");
        assert_eq!(s.step, 2, "now pausing");
        assert!(advance(&spec, &mut s, 7999).is_empty());
        let notes: Vec<_> = advance(&spec, &mut s, 8000).into_iter().map(|n| n.reason).collect();
        assert_eq!(notes, ["WeightChanged", "Promoted"]);
        assert_eq!((s.phase, s.weight), (RolloutPhase::Succeeded, 100));
        assert_eq!(traffic(&spec, &s), Traffic::Weighted(100));
    }

    #[test]
    fn failed_checks_reaching_the_threshold_roll_back() {
        let spec = canary();
        let (mut s, _) = start(1, 0);
        advance(&spec, &mut s, 0);
        let notes = record_check(&spec, &mut s, check(Verdict::Failed), 1000);
        assert_eq!(notes.len(), 1);
        assert!(notes[0].message.contains("successRate=50.000 (min 99) FAILED"), "{}", notes[0].message);
        record_check(&spec, &mut s, check(Verdict::Passed), 2000);
        let notes: Vec<_> = record_check(&spec, &mut s, check(Verdict::Failed), 3000).into_iter().map(|n| n.reason).collect();
        assert_eq!(notes, ["CheckFailed", "RolledBack"]);
        assert_eq!(traffic(&spec, &s), Traffic::Weighted(0));
        assert!(advance(&spec, &mut s, 4000).is_empty(), "a finished rollout stays put");
        assert!(!canary_has_traffic(&spec, &s));
    }

    #[test]
    fn judged_strategies_promote_after_their_checks() {
        let spec = spec(Strategy::BlueGreen(JudgedStrategy { checks: 2 }));
        let (mut s, _) = start(1, 0);
        assert_eq!(traffic(&spec, &s), Traffic::Weighted(100), "blue/green switches at once");
        record_check(&spec, &mut s, check(Verdict::Passed), 1000);
        assert!(advance(&spec, &mut s, 1000).is_empty());
        record_check(&spec, &mut s, check(Verdict::Passed), 2000);
        assert_eq!(advance(&spec, &mut s, 2000)[0].reason, "Promoted");
    }

    #[test]
    fn manual_actions() {
        let spec = canary();
        let (mut s, _) = start(1, 0);
        advance(&spec, &mut s, 0);
        assert_eq!(
            act(&spec, &mut s, Action::Resume, 1).unwrap_err(),
            NotApplicable { action: Action::Resume, phase: RolloutPhase::Progressing }
        );
        act(&spec, &mut s, Action::Pause, 1).unwrap();
        assert!(!canary_has_traffic(&spec, &s), "a paused rollout is not judged");
        assert_eq!(traffic(&spec, &s), Traffic::Weighted(20), "a pause keeps the weight");
        act(&spec, &mut s, Action::Resume, 2).unwrap();
        assert_eq!(act(&spec, &mut s, Action::Abort, 3).unwrap().reason, "Aborted");
        assert_eq!(traffic(&spec, &s), Traffic::Weighted(0));
        assert!(act(&spec, &mut s, Action::Promote, 4).is_err(), "finished");
        let (mut s, _) = start(1, 0);
        assert_eq!(act(&spec, &mut s, Action::Promote, 1).unwrap().reason, "Promoted");
        assert_eq!(s.weight, 100);
    }
}
