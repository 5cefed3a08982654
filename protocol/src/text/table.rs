//! Aligned plain-text tables: the one renderer behind the master's text mode
//! (`render_table`, whose bytes go on the wire) and the `retire` CLI's tables
//! ([`Table`], with right-aligned columns, record tables without a header, and cells
//! cleaned of control characters). Pure: text in, text out.

use std::borrow::Cow;

/// The columns of a task listing, in order: the header of the master's
/// text-mode `tasks` and of `retire tasks`, written once so the two read
/// alike (the cells differ: the CLI shows the submission's age).
pub const TASK_COLUMNS: [&str; 7] = [
    "ID",
    "TYPE",
    "STATE",
    "PRIORITY",
    "ATTEMPT",
    "DEVICE",
    "SUBMITTED",
];

/// Which side of its column a cell sticks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text: padded on the right.
    Left,
    /// Numbers: padded on the left, so digits line up.
    Right,
}

/// A table whose columns are as wide as their widest cell, separated by two spaces,
/// with no trailing blanks.
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

    /// The table as text, one line per row, each ending in `\n`, with no trailing
    /// blanks. Control characters in the cells become spaces (see [`clean`]).
    pub fn render(&self) -> String {
        let rows: Vec<Vec<Cow<'_, str>>> = self
            .rows
            .iter()
            .map(|row| row.iter().map(|cell| clean(cell)).collect())
            .collect();
        let header: Vec<&str> = self.headers.iter().map(String::as_str).collect();
        layout(self.show_header.then_some(&header[..]), &self.aligns, &rows)
    }
}

/// Lays out rows under headers in columns as wide as their widest cell, separated by
/// two spaces, with no trailing blanks, all left-aligned, the cells as they are. The
/// master's text mode answers with it, so its output is part of the wire.
pub fn render_table<S: AsRef<str>, R: AsRef<[S]>>(headers: &[&str], rows: &[R]) -> String {
    let rows: Vec<Vec<&str>> = rows
        .iter()
        .map(|row| row.as_ref().iter().map(AsRef::as_ref).collect())
        .collect();
    layout(Some(headers), &vec![Align::Left; headers.len()], &rows)
}

/// Replaces control characters with spaces. Cells hold text that devices chose (host
/// names, error messages), and a newline would break the alignment while an escape
/// sequence could rewrite the user's terminal.
pub fn clean(cell: &str) -> Cow<'_, str> {
    if cell.chars().any(char::is_control) {
        Cow::Owned(
            cell.chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect(),
        )
    } else {
        Cow::Borrowed(cell)
    }
}

/// The one layout: as many columns as `aligns`, a row's missing cells blank and its
/// extra ones dropped, the header line first when there is one.
fn layout<S: AsRef<str>>(header: Option<&[&str]>, aligns: &[Align], rows: &[Vec<S>]) -> String {
    let n_columns = aligns.len();
    let mut widths = vec![0; n_columns];
    let mut measure = |cells: &mut dyn Iterator<Item = &str>| {
        for (width, cell) in widths.iter_mut().zip(cells) {
            *width = (*width).max(cell.chars().count());
        }
    };
    if let Some(header) = header {
        measure(&mut header.iter().copied());
    }
    for row in rows {
        measure(&mut row.iter().map(AsRef::as_ref));
    }
    // One buffer for the whole table, sized up front: a master answers `tasks` with a
    // table of 100 rows, and readers may ask for it often.
    let line_width: usize = widths.iter().map(|w| w + GAP.len()).sum::<usize>() + 1;
    let mut out = String::with_capacity(line_width * (rows.len() + 1));
    let mut push_line = |cells: &mut dyn Iterator<Item = &str>| {
        let start = out.len();
        for (column, width) in widths.iter().enumerate() {
            let cell = cells.next().unwrap_or("");
            if column > 0 {
                out.push_str(GAP);
            }
            let pad = width.saturating_sub(cell.chars().count());
            match aligns[column] {
                Align::Left => {
                    out.push_str(cell);
                    out.extend(std::iter::repeat_n(' ', pad));
                }
                Align::Right => {
                    out.extend(std::iter::repeat_n(' ', pad));
                    out.push_str(cell);
                }
            }
        }
        let kept = out[start..].trim_end().len();
        out.truncate(start + kept);
        out.push('\n');
    };
    if let Some(header) = header {
        push_line(&mut header.iter().copied());
    }
    for row in rows {
        push_line(&mut row.iter().map(AsRef::as_ref));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let rows = vec![vec!["pi-kitchen", "online"], vec!["nas", "offline"]];
        assert_eq!(
            render_table(&["ID", "STATUS"], &rows),
            "ID          STATUS\npi-kitchen  online\nnas         offline\n"
        );
        let empty: Vec<Vec<String>> = Vec::new();
        assert_eq!(render_table(&["A", "B"], &empty), "A  B\n");
    }

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
}
