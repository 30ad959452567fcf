//! `--cache-list` and `--cache-clear`: the phase cache without a build.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{plan::cache_dir, CacheCommand, CacheOptions};
use crate::cache::{EntryInfo, Limits, Store};
use crate::engine::checkpoints::human_age;
use crate::report::progress::human;
use crate::report::{Json, Reporter, Stream};

/// Runs `command` on the cache the options name; the exit status.
pub fn run(command: CacheCommand, o: &CacheOptions, r: &Reporter) -> u8 {
    let dir = cache_dir(o);
    let store = match Store::open(&dir, Limits { max_bytes: o.max_bytes, max_age: o.max_age }) {
        Ok(s) => s,
        Err(e) => {
            r.error(&e.to_string());
            return 1;
        }
    };
    match command {
        CacheCommand::List => {
            let entries = store.list();
            r.write(Stream::Out, listing(&entries, SystemTime::now()).as_bytes());
            for e in &entries {
                let key = e.manifest.key.to_string();
                r.record(
                    "cache-entry",
                    &key,
                    &[
                        ("key", Json::Str(&key)),
                        ("phase", Json::Str(&e.manifest.phase)),
                        ("created", Json::Count(e.manifest.created)),
                        ("bytes", Json::Count(e.bytes)),
                        ("elements", Json::Str(&e.manifest.elements.join(" "))),
                    ],
                );
            }
            0
        }
        CacheCommand::Clear => match store.clear() {
            Ok(n) => {
                let left = store.list().len();
                let noun = if n == 1 { "entry" } else { "entries" };
                let mut line = format!("removed {n} {noun} from the phase cache {}", dir.display());
                if left > 0 {
                    line += &format!(" ({left} in use by a running build stay)");
                }
                r.info(&line);
                0
            }
            Err(e) => {
                r.error(&e.to_string());
                1
            }
        },
    }
}

/// The entries as a table, most recently used first: key, age, size, last phase, elements.
fn listing(entries: &[EntryInfo], now: SystemTime) -> String {
    if entries.is_empty() {
        return "The phase cache is empty.\n".to_owned();
    }
    let mut s = format!("{:<10} {:>8} {:>10}  {:<16} {}\n", "Key", "Age", "Size", "After", "Elements");
    let mut total = 0;
    for e in entries {
        let created = UNIX_EPOCH + Duration::from_secs(e.manifest.created);
        let age = human_age(now.duration_since(created).unwrap_or_default());
        total += e.bytes;
        s += &format!(
            "{:<10} {:>8} {:>10}  {:<16} {}\n",
            e.manifest.key.0.short(),
            age,
            human(e.bytes as f64),
            e.manifest.phase,
            e.manifest.elements.join(" ")
        );
    }
    let count = match entries.len() {
        1 => "1 entry".to_owned(),
        n => format!("{n} entries"),
    };
    s += &format!("{count}, {}\n", human(total as f64));
    s
}
