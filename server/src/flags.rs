//! The one way a part's settings get their defaults: from its own clap flags.
//!
//! Each part of the server owns its flags (a `#[derive(clap::Args)]` struct, flattened into
//! [`crate::config::Args`]) with their defaults written once, in the `#[arg]` attribute. Its
//! `Default` settings are those flags parsed from an empty command line, with the `VECRIG_*`
//! environment ignored, so that a test's configuration never depends on the shell it runs in.

/// `A`'s flags as an empty command line gives them, environment variables ignored.
///
/// # Panics
/// If a default does not parse: a programming error that every unit test would show.
pub fn defaults<A: clap::Args + clap::FromArgMatches>() -> A {
    let command = A::augment_args(clap::Command::new("vecrig-server")).mut_args(|a| a.env(None));
    let matches = command
        .try_get_matches_from(["vecrig-server"])
        .expect("the flags' defaults parse");
    A::from_arg_matches(&matches).expect("the flags' defaults parse")
}
