//! Runs the benchmark harness (`testkit::bench`, the code behind
//! examples/bench.rs) in `--quick` mode against the binaries this
//! `cargo test` built, so the harness cannot rot. Asserts
//! only that every scenario ran and is in the table: speed is the
//! benchmark's business, never a test's.

mod util;

use std::path::Path;

use testkit::bench;

#[test]
fn quick_benchmark_runs_every_scenario() {
    util::with_timeout(120, || {
        let bins = Path::new(env!("CARGO_BIN_EXE_peer"))
            .parent()
            .expect("bin dir")
            .to_path_buf();
        let args: Vec<String> = ["--quick", "--reps", "1", "--bin-dir"]
            .iter()
            .map(|s| s.to_string())
            .chain([bins.display().to_string(), "all".into()])
            .collect();
        let mut out = Vec::new();
        let rows = bench::run(&args, &mut out).expect("harness ran");
        let table = String::from_utf8(out).expect("utf-8 table");
        print!("{table}");
        let errors: Vec<_> = rows
            .iter()
            .filter(|r| r.met == bench::Met::Error)
            .map(|r| format!("{}: {}", r.scenario, r.value))
            .collect();
        assert!(errors.is_empty(), "scenarios failed: {errors:?}\n{table}");
        assert!(table.contains("| scenario"), "no table header:\n{table}");
        for (name, label) in bench::SCENARIOS {
            assert!(
                table.contains(&format!("| {label} ")),
                "no row for scenario {name} ({label}):\n{table}"
            );
        }
    });
}
