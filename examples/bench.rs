//! `cargo run --release --example bench -- all`: the benchmark harness of
//! issue 5. See docs/benchmarks.md for what each scenario measures and
//! testkit/src/bench/ for the code (shared with tests/bench_quick.rs).

use testkit::bench;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

fn main() -> ExitCode {
    // Ctrl-C or SIGTERM: every wait gives up and the drop guards kill the
    // children and remove the scratch folders.
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, Arc::clone(&flag));
    }
    let watcher = Arc::clone(&flag);
    let _ = std::thread::Builder::new()
        .name("stop-watch".into())
        .spawn(move || {
            while !watcher.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            bench::util::STOP.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out = std::io::stdout();
    match bench::run(&args, &mut out) {
        Ok(rows) if rows.iter().any(|r| r.met == bench::Met::Error) => ExitCode::from(2),
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}
