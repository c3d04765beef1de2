//! The binaries' flags as a user meets them: every flag a user can set is also a `VECRIG_*`
//! environment variable (the README's promise), no two flags of one command share a
//! variable, and every flag shown in `--help` sits under a heading.

use std::collections::BTreeMap;

use clap::CommandFactory;

/// For `command` and each of its subcommands, the flags that break a rule, as
/// "command --flag: what is wrong". Global flags are checked where they are declared.
fn flag_problems(command: &clap::Command, path: &str, problems: &mut Vec<String>) {
    let mut variables: BTreeMap<String, String> = BTreeMap::new();
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        if arg.is_positional() || arg.is_hide_set() || matches!(id, "help" | "version") {
            continue;
        }
        let flag = format!("{path} --{}", arg.get_long().unwrap_or(id));
        match arg.get_env().and_then(|env| env.to_str()) {
            Some(env) if env.starts_with("VECRIG_") => {
                if let Some(other) = variables.insert(env.to_string(), flag.clone()) {
                    problems.push(format!("{flag}: {env} is also {other}'s variable"));
                }
            }
            Some(env) => problems.push(format!("{flag}: variable {env} lacks VECRIG_")),
            None => problems.push(format!("{flag}: no VECRIG_* variable")),
        }
        if path.split(' ').count() == 1 && arg.get_help_heading().is_none() {
            problems.push(format!("{flag}: no help heading"));
        }
    }
    for sub in command.get_subcommands() {
        flag_problems(sub, &format!("{path} {}", sub.get_name()), problems);
    }
}

fn assert_flags_follow_the_rules(mut command: clap::Command) {
    command.build();
    let name = command.get_name().to_string();
    let mut problems = Vec::new();
    flag_problems(&command, &name, &mut problems);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_loadgen_flag_has_a_variable_and_a_heading() {
    assert_flags_follow_the_rules(vecrig_loadgen::cli::Cli::command());
}

#[test]
fn every_server_flag_has_a_variable_and_a_heading() {
    assert_flags_follow_the_rules(vecrig_server::config::Args::command());
}
