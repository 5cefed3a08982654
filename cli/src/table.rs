//! Aligned plain-text tables for people, plus the small formatters the
//! tables share (relative times, sizes).

use std::time::SystemTime;

/// Which side of its column a cell sticks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text: padded on the right.
    Left,
    /// Numbers: padded on the left, so digits line up.
    Right,
}

/// A table whose columns are as wide as their widest cell.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    aligns: Vec<Align>,
    rows: Vec<Vec<String>>,
    show_header: bool,
}

/// The gap between two columns.
const GAP: &str = "  ";

impl Table {
    /// A table with these left-aligned column headers.
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|header| header.to_string()).collect(),
            aligns: vec![Align::Left; headers.len()],
            rows: Vec::new(),
            show_header: true,
        }
    }

    /// A table of `key value` pairs with no header line, for one record.
    pub fn pairs<K: AsRef<str>>(pairs: impl IntoIterator<Item = (K, String)>) -> Table {
        let mut table = Table::new(&["", ""]);
        table.show_header = false;
        for (key, value) in pairs {
            table.push(vec![key.as_ref().to_string(), value]);
        }
        table
    }

    /// Right-aligns the columns with these headers.
    pub fn align_right(mut self, headers: &[&str]) -> Table {
        for (header, align) in self.headers.iter().zip(self.aligns.iter_mut()) {
            if headers.contains(&header.as_str()) {
                *align = Align::Right;
            }
        }
        self
    }

    /// Adds a row. Missing cells are blank and extra cells are dropped.
    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    /// Whether no row has been added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row, each ending in `\n`, with no
    /// trailing blanks.
    pub fn render(&self) -> String {
        let n_columns = self.headers.len();
        let cleaned: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|row| {
                (0..n_columns)
                    .map(|column| row.get(column).map_or(String::new(), |cell| clean(cell)))
                    .collect()
            })
            .collect();
        let mut lines: Vec<&[String]> = Vec::new();
        if self.show_header {
            lines.push(&self.headers);
        }
        lines.extend(cleaned.iter().map(Vec::as_slice));

        let mut widths = vec![0; n_columns];
        for line in &lines {
            for (width, cell) in widths.iter_mut().zip(line.iter()) {
                *width = (*width).max(cell.chars().count());
            }
        }

        let mut text = String::new();
        for line in lines {
            let mut rendered = String::new();
            for (column, cell) in line.iter().enumerate() {
                if column > 0 {
                    rendered.push_str(GAP);
                }
                let padding = " ".repeat(widths[column] - cell.chars().count());
                match self.aligns[column] {
                    Align::Left => {
                        rendered.push_str(cell);
                        rendered.push_str(&padding);
                    }
                    Align::Right => {
                        rendered.push_str(&padding);
                        rendered.push_str(cell);
                    }
                }
            }
            text.push_str(rendered.trim_end());
            text.push('\n');
        }
        text
    }
}

/// Replaces control characters with spaces. Cells hold text that devices
/// chose (host names, error messages), and a newline would break the
/// alignment while an escape sequence could rewrite the user's terminal.
pub fn clean(cell: &str) -> String {
    cell.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// An RFC 3339 timestamp as a short age (`12s ago`, `5m ago`, `3h ago`,
/// `2d ago`) relative to `now`; text that is no timestamp is shown as is.
pub fn ago(timestamp: &str, now: SystemTime) -> String {
    let Ok(then) = humantime::parse_rfc3339_weak(timestamp) else {
        return timestamp.to_string();
    };
    // A clock that runs ahead on the master makes `then` later than `now`;
    // that is not worth more than "just now".
    let seconds = now.duration_since(then).map_or(0, |age| age.as_secs());
    match seconds {
        0..60 => format!("{seconds}s ago"),
        60..3_600 => format!("{}m ago", seconds / 60),
        3_600..86_400 => format!("{}h ago", seconds / 3_600),
        _ => format!("{}d ago", seconds / 86_400),
    }
}

/// A size in GiB with one decimal, as `7.6G`.
pub fn gigabytes(gb: f64) -> String {
    format!("{gb:.1}G")
}

/// An optional cell: its text, or `-` when absent.
pub fn or_dash(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "-".to_string(), |value| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(table: Table, expect: &str) {
        assert_eq!(table.render(), expect);
    }

    fn table(headers: &[&str], rows: &[&[&str]]) -> Table {
        let mut table = Table::new(headers);
        for row in rows {
            table.push(row.iter().map(|cell| cell.to_string()).collect());
        }
        table
    }

    #[test]
    fn alignment() {
        check(table(&["ID", "STATE"], &[]), "ID  STATE\n");
        check(
            table(
                &["ID", "STATE"],
                &[&["t-1", "running"], &["task-long", "queued"]],
            ),
            "ID         STATE\n\
             t-1        running\n\
             task-long  queued\n",
        );
        check(
            table(
                &["ID", "CORES", "ROLE"],
                &[&["pi", "4", "worker"], &["nas", "16", "storage"]],
            )
            .align_right(&["CORES"]),
            "ID   CORES  ROLE\n\
             pi       4  worker\n\
             nas     16  storage\n",
        );
        // The last column is not padded, blank cells leave no trailing
        // blanks, and short rows are filled.
        check(
            table(
                &["A", "B", "C"],
                &[&["x", "", ""], &["y", "long"], &["z", "w", "v"]],
            ),
            "A  B     C\n\
             x\n\
             y  long\n\
             z  w     v\n",
        );
        // Width counts characters, not bytes.
        check(
            table(&["NAME", "X"], &[&["héllo", "1"], &["hi", "2"]]),
            "NAME   X\n\
             héllo  1\n\
             hi     2\n",
        );
        // Control characters cannot break a line or reach the terminal.
        check(
            table(&["ERROR", "X"], &[&["bad\nline\x1b", "1"]]),
            "ERROR      X\n\
             bad line   1\n",
        );
        check(
            Table::pairs([
                ("state", "running".to_string()),
                ("attempt", "2".to_string()),
            ]),
            "state    running\n\
             attempt  2\n",
        );
    }

    #[test]
    fn ages() {
        let now = humantime::parse_rfc3339("2024-01-15T10:31:00Z").expect("a valid timestamp");
        let check = |timestamp: &str, expect: &str| assert_eq!(ago(timestamp, now), expect);
        check("2024-01-15T10:30:48Z", "12s ago");
        check("2024-01-15T10:30:59.5Z", "0s ago");
        check("2024-01-15T10:26:00Z", "5m ago");
        check("2024-01-15T07:00:00Z", "3h ago");
        check("2024-01-13T10:31:00Z", "2d ago");
        check("2024-01-15T10:32:00Z", "0s ago");
        check("yesterday", "yesterday");
    }
}
