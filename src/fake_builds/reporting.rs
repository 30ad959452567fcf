//! What a build tells its user: progress lines, script output, the time summary, the build
//! log and the --machine-readable records.

use super::FakeBuild;
use crate::guest::fake::{Op, Run};
use crate::guest::ExitStatus;
use crate::report::ReporterOptions;

fn chatty() -> FakeBuild {
    let build = FakeBuild::new(&["chatty"]);
    build.element("chatty", &[("install.d/10-talk", "#!/bin/sh\n"), ("finalise.d/10-talk", "#!/bin/sh\n")]);
    build.vm.on_script("install.d", "10-talk", |run: &mut Run<'_>| {
        run.say("hello from install.d\n");
        ExitStatus::Code(0)
    });
    build
}

#[test]
fn progress_lines_and_script_output_reach_the_console_in_order() {
    let build = chatty();
    let out = build.run();
    out.succeeded();
    let said = &out.said;
    let at = |needle: &str| said.find(needle).unwrap_or_else(|| panic!("no {needle:?} in:\n{said}"));
    assert!(at("] Opening the disks") < at("] Running: install.d/10-talk"));
    assert!(at("] Running: install.d/10-talk") < at("hello from install.d\n"));
    assert!(at("hello from install.d\n") < at("] Running: finalise.d/10-talk"));
    assert!(at("] Umounting the disks") < at("] Done"));
}

#[test]
fn quiet_silences_progress_and_script_output_but_not_errors() {
    let build = chatty();
    build.element("chatty", &[("finalise.d/20-fail", "#!/bin/sh\n")]);
    build.vm.on_script("finalise.d", "20-fail", |_: &mut Run<'_>| ExitStatus::Code(3));
    let out = build.run_with(&ReporterOptions { quiet: true, ..Default::default() });
    assert!(!out.said.contains("hello from install.d"), "{}", out.said);
    assert!(!out.said.contains("] Running:"), "{}", out.said);
    assert!(
        out.said.contains("microdib: error: finalise.d/20-fail (element chatty) failed: exit status 3"),
        "{}",
        out.said
    );
}

#[test]
fn the_time_summary_has_a_row_a_phase_and_the_total() {
    let out = chatty().run();
    out.succeeded();
    for row in ["install.d", "finalise.d", "build VM start", "outputs after the VM", "other", "total"] {
        assert!(out.said.lines().any(|l| l.starts_with(row)), "no {row} row in:\n{}", out.said);
    }
    let summary: Vec<&String> = out.records.iter().filter(|r| r.contains("\"type\": \"time-summary\"")).collect();
    assert!(
        summary.iter().any(|r| r.contains("\"step\": \"install.d\"") && r.contains("\"scripts\": 1")),
        "{summary:?}"
    );
    assert!(summary.iter().any(|r| r.contains("\"step\": \"total\"")), "{summary:?}");
}

#[test]
fn the_build_log_gets_each_phases_profiling_table() {
    let build = chatty();
    build.run().succeeded();
    let appended: String = build
        .vm
        .ops()
        .into_iter()
        .filter_map(|op| match op {
            Op::Append { path, text } if path.contains("/perm/microdib-") => Some(text),
            _ => None,
        })
        .collect();
    assert!(appended.contains("Target: install.d"), "{appended}");
    assert!(appended.contains("10-talk"), "{appended}");
}

#[test]
fn every_record_has_the_fields_its_type_requires_in_the_schema() {
    let build = chatty();
    build.element("chatty", &[("finalise.d/20-fail", "#!/bin/sh\n")]);
    build.vm.on_script("finalise.d", "20-fail", |_: &mut Run<'_>| ExitStatus::Code(3));
    let failed = build.run();
    let ok = chatty().run();
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/machine-readable.schema.json")).unwrap(),
    )
    .unwrap();
    let mut kinds = std::collections::BTreeSet::new();
    for line in failed.records.iter().chain(&ok.records) {
        let record: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let kind = record["type"].as_str().unwrap_or_else(|| panic!("no type: {line}")).to_owned();
        let known = schema["properties"]["type"]["enum"].as_array().unwrap();
        assert!(known.iter().any(|k| k == kind.as_str()), "type {kind} is not in the schema: {line}");
        let mut required: Vec<&serde_json::Value> = schema["required"].as_array().unwrap().iter().collect();
        for rule in schema["allOf"].as_array().unwrap() {
            if rule["if"]["properties"]["type"]["const"] == kind.as_str() {
                required.extend(rule["then"]["required"].as_array().unwrap());
            }
        }
        for key in required {
            assert!(record.get(key.as_str().unwrap()).is_some(), "{kind} lacks {key}: {line}");
        }
        kinds.insert(kind);
    }
    for kind in ["message", "error", "phase-start", "script-start", "script-end", "phase-end", "time-summary"] {
        assert!(kinds.contains(kind), "no {kind} record among {kinds:?}");
    }
}
