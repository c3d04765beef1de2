//! [`ScenarioSpec`]: one scenario to run, named and with its parameters, before it is built
//! against the target's dimensions into an [`Scenario`](crate::plan::scenario::Scenario).

use crate::plan::noisy_neighbour::NoisyNeighbour;
use crate::plan::scenario::Scenario;
use crate::plan::suite::{
    self, Common, ExtremeConcurrency, MemoryPressure, ResourceExhaustion, Scale, Sustained,
};

/// One scenario to run, with its parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum ScenarioSpec {
    /// See [`ExtremeConcurrency`].
    ExtremeConcurrency(ExtremeConcurrency),
    /// See [`MemoryPressure`].
    MemoryPressure(MemoryPressure),
    /// See [`Sustained`].
    Sustained(Sustained),
    /// See [`ResourceExhaustion`].
    ResourceExhaustion(ResourceExhaustion),
    /// See [`Scale`].
    Scale(Scale),
    /// See [`suite::Load`].
    Load(suite::Load),
    /// See [`NoisyNeighbour`].
    NoisyNeighbour(NoisyNeighbour),
}

impl ScenarioSpec {
    pub(crate) fn build(&self, common: &Common) -> Scenario {
        match self {
            ScenarioSpec::ExtremeConcurrency(p) => p.build(common),
            ScenarioSpec::MemoryPressure(p) => p.build(common),
            ScenarioSpec::Sustained(p) => p.build(common),
            ScenarioSpec::ResourceExhaustion(p) => p.build(common),
            ScenarioSpec::Scale(p) => p.build(common),
            ScenarioSpec::Load(p) => p.build(common),
            ScenarioSpec::NoisyNeighbour(p) => p.build(common),
        }
    }

    /// The five scenarios of the specification, in its order, at a profile's sizes.
    pub fn suite(profile: suite::Profile) -> Vec<ScenarioSpec> {
        let full = profile == suite::Profile::Full;
        vec![
            ScenarioSpec::ExtremeConcurrency(if full {
                ExtremeConcurrency::full()
            } else {
                ExtremeConcurrency::quick()
            }),
            ScenarioSpec::MemoryPressure(if full {
                MemoryPressure::full()
            } else {
                MemoryPressure::quick()
            }),
            ScenarioSpec::Sustained(if full {
                Sustained::full()
            } else {
                Sustained::quick()
            }),
            ScenarioSpec::ResourceExhaustion(if full {
                ResourceExhaustion::full()
            } else {
                ResourceExhaustion::quick()
            }),
            ScenarioSpec::Scale(if full { Scale::full() } else { Scale::quick() }),
        ]
    }

    /// The scenario's name.
    pub fn name(&self) -> &'static str {
        match self {
            ScenarioSpec::ExtremeConcurrency(_) => "extreme-concurrency",
            ScenarioSpec::MemoryPressure(_) => "memory-pressure",
            ScenarioSpec::Sustained(_) => "sustained",
            ScenarioSpec::ResourceExhaustion(_) => "resource-exhaustion",
            ScenarioSpec::Scale(_) => "scale",
            ScenarioSpec::Load(_) => "load",
            ScenarioSpec::NoisyNeighbour(_) => "noisy-neighbour",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suite_has_the_five_in_order_and_builds() {
        let common = Common {
            dimensions: 8,
            seed: 1,
            k: 10,
            workload: None,
            templates: None,
        };
        for profile in [suite::Profile::Quick, suite::Profile::Full] {
            let suite = ScenarioSpec::suite(profile);
            let names: Vec<&str> = suite.iter().map(ScenarioSpec::name).collect();
            assert_eq!(
                names,
                [
                    "extreme-concurrency",
                    "memory-pressure",
                    "sustained",
                    "resource-exhaustion",
                    "scale"
                ]
            );
            for spec in &suite {
                let scenario = spec.build(&common);
                assert_eq!(scenario.name, spec.name());
                assert!(!scenario.thresholds.is_empty());
                assert!(!scenario.phases.is_empty());
            }
        }
    }
}
