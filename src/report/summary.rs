//! The time summary at the end of a build: one row a phase or step, with its slowest script
//! (disk-image-create ends with a `Script  Seconds` table per phase; this is one table for the
//! whole build), printed unless -q and sent as `time-summary` records.

use super::messages::{Json, Reporter};

/// One phase (`install.d`) or step (`outputs`) of a build and how long it took.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    step: String,
    seconds: f64,
    scripts: usize,
    slowest: Option<(String, f64)>,
}

/// The rows of one build, in the order they ran.
#[derive(Debug, Default)]
pub struct TimeSummary {
    rows: Vec<Row>,
}

impl TimeSummary {
    /// A phase and its scripts' times.
    pub fn phase(&mut self, phase: &str, seconds: f64, scripts: &[(String, f64)]) {
        let slowest = scripts.iter().max_by(|a, b| a.1.total_cmp(&b.1)).cloned();
        self.rows.push(Row { step: phase.to_owned(), seconds, scripts: scripts.len(), slowest });
    }

    /// A step that is not a phase (starting the build VM, writing the outputs).
    pub fn step(&mut self, step: &str, seconds: f64) {
        self.rows.push(Row { step: step.to_owned(), seconds, scripts: 0, slowest: None });
    }

    /// Time not in any row: preparing, disks and mounts, the image's clean-up.
    fn other(&self, total: f64) -> f64 {
        (total - self.rows.iter().map(|r| r.seconds).sum::<f64>()).max(0.0)
    }

    /// The table, ending with the rest of the time and the build's `total` seconds.
    pub fn table(&self, total: f64) -> String {
        let mut s = format!("{:<24} {:>9}  {:>7}  {}\n", "Phase or step", "Seconds", "Scripts", "Slowest script");
        s.push_str(&format!("{} {}  {}  {}\n", "-".repeat(24), "-".repeat(9), "-".repeat(7), "-".repeat(30)));
        for r in &self.rows {
            let scripts = if r.scripts == 0 { String::new() } else { r.scripts.to_string() };
            let slowest = r.slowest.as_ref().map(|(n, t)| format!("{n} ({t:.1} s)")).unwrap_or_default();
            let line = format!("{:<24} {:>9.1}  {scripts:>7}  {slowest}", r.step, r.seconds);
            s.push_str(line.trim_end());
            s.push('\n');
        }
        s.push_str(&format!(
            "{:<24} {:>9.1}  {:>7}  (preparing, disks, mounts, clean-up)\n",
            "other",
            self.other(total),
            ""
        ));
        s.push_str(&format!("{:<24} {total:>9.1}\n", "total"));
        s
    }

    /// Prints the table (unless -q) and sends one record per row and one for the total.
    pub fn report(&self, r: &Reporter, total: f64) {
        if !r.quiet() {
            r.write(super::Stream::Out, self.table(total).as_bytes());
        }
        for row in &self.rows {
            let message = format!("{}: {:.1} s", row.step, row.seconds);
            let mut fields = vec![("step", Json::Str(&row.step)), ("seconds", Json::Secs(row.seconds))];
            if row.scripts > 0 {
                fields.push(("scripts", Json::Count(row.scripts as u64)));
            }
            r.record("time-summary", &message, &fields);
        }
        let other = self.other(total);
        r.record(
            "time-summary",
            &format!("other: {other:.1} s"),
            &[("step", Json::Str("other")), ("seconds", Json::Secs(other))],
        );
        r.record(
            "time-summary",
            &format!("total: {total:.1} s"),
            &[("step", Json::Str("total")), ("seconds", Json::Secs(total))],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_row_a_phase_with_its_slowest_script() {
        let mut t = TimeSummary::default();
        t.step("build VM start", 1.3);
        t.phase("install.d", 12.0, &[("10-a".into(), 2.0), ("20-b".into(), 9.5)]);
        t.phase("finalise.d", 0.0, &[]);
        let table = t.table(30.0);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "Phase or step              Seconds  Scripts  Slowest script");
        assert_eq!(lines[2], "build VM start                 1.3");
        assert_eq!(lines[3], "install.d                     12.0        2  20-b (9.5 s)");
        assert_eq!(lines[4], "finalise.d                     0.0");
        assert_eq!(lines[5], "other                         16.7           (preparing, disks, mounts, clean-up)");
        assert_eq!(lines[6], "total                         30.0");
    }
}
