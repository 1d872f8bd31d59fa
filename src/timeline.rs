//! The boot as named, timed steps: every error carries its step's name to the
//! failure handler, and the one-line summary gives every step's duration.

use std::time::{Duration, Instant};

use anyhow::Result;

/// A failed step: its name and the error.
#[derive(Debug)]
pub struct StepError {
    pub step: &'static str,
    pub error: anyhow::Error,
}

/// The boot's timeline: each step's name and duration.
#[derive(Debug, Default)]
pub struct Timeline {
    pub steps: Vec<(&'static str, Duration)>,
}

impl Timeline {
    /// Run one named step, recording its duration; an error carries the name.
    pub fn step<T>(
        &mut self,
        name: &'static str,
        f: impl FnOnce() -> Result<T>,
    ) -> std::result::Result<T, StepError> {
        let start = Instant::now();
        let result = f();
        let took = start.elapsed();
        self.steps.push((name, took));
        log::debug!("step {name}: {} ms", crate::decimal::millis(took, 1));
        result.map_err(|error| StepError { step: name, error })
    }

    /// `name=1.2ms name=3.4ms ...`, the one-line summary.
    pub fn summary(&self) -> String {
        self.steps
            .iter()
            .map(|(name, d)| {
                format!(
                    "{}={}ms",
                    name.replace(' ', "-"),
                    crate::decimal::millis(*d, 1)
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::bail;

    #[test]
    fn timeline_names_the_failing_step() {
        let mut t = Timeline::default();
        t.step("one", || Ok(())).unwrap();
        let err = t
            .step("two", || -> Result<()> { bail!("boom") })
            .unwrap_err();
        assert_eq!(err.step, "two");
        assert_eq!(t.steps.len(), 2);
        assert!(t.summary().starts_with("one="));
    }
}
