//! `cargo run -p lienthong-edxml --example inspect FILE…`: what
//! `lienthong edxml inspect` prints, without the gateway. Exit 0 when every
//! file parsed, 2 when one could not.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut code = ExitCode::SUCCESS;
    for arg in std::env::args().skip(1) {
        match lienthong_edxml::inspect_file(Path::new(&arg)) {
            Ok(v) => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
            Err(e) => {
                eprintln!("{arg}: {} ({})", e.message(), e.reason());
                code = ExitCode::from(2);
            }
        }
    }
    code
}
