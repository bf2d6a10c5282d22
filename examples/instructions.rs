//! Counts the instructions of one command through `Broker::execute` (no SSH transport), for
//! figures that the noise of a shared machine cannot move: scripts/bench runs this under
//! valgrind's callgrind twice, with two call counts, and divides the difference in
//! instructions by the difference in calls, so setup and start-up cancel out.
//!
//! ```text
//! valgrind --tool=callgrind --callgrind-out-file=cg.out target/release/examples/instructions cert 200
//! ```

#[path = "../benches/support/fixture.rs"]
mod fixture;

/// The daemon's allocator, so the count is of what the daemon runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(command), Some(calls)) = (args.next(), args.next().and_then(|n| n.parse().ok()))
    else {
        eprintln!("usage: instructions cert|whoami CALLS");
        std::process::exit(2);
    };
    let f = fixture::fixture();
    let (inv, stdin) = match command.as_str() {
        "cert" => (&f.cert, f.subject.as_bytes()),
        "whoami" => (&f.whoami, &b""[..]),
        _ => {
            eprintln!("instructions: no such command {command:?}; give cert or whoami");
            std::process::exit(2);
        }
    };
    for _ in 0..calls {
        let out: sshjit::broker::Output = f.broker.execute(&f.alice, inv, stdin, f.now);
        assert_eq!(out.status, 0, "{}", out.stderr);
    }
}
