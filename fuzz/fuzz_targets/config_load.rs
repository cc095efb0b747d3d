//! Arbitrary bytes as the text of `wxmp.toml`: parsing, validation, the safe-mode key check and
//! the command table (`Router::from_config`, which also compiles regexes and looks programs up
//! with `stat`, never running or reading them) return Ok or a list of errors, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wxmp::config::Config;
use wxmp::router::Router;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(config) = Config::from_toml(&text) else {
        return;
    };
    let _ = config.validate();
    let _ = config.crypt();
    let _ = config.log.settings();
    if let Ok(router) = Router::from_config(&config) {
        let _ = router.describe();
        for c in router.commands() {
            let _ = (c.rule(), c.describe_action());
        }
    }
});
