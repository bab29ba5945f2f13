//! Plain-text tables for terminals: the snapshot's and the leak guard's.

use std::fmt::{self, Write as _};

/// How a column's cells line up: text to the left, numbers to the right.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Align {
    Left,
    Right,
}

/// Writes `rows` under `headers`, indented by two, each column as wide as its widest cell and
/// two spaces from the next; trailing spaces are trimmed.
pub(crate) fn write(
    out: &mut dyn fmt::Write,
    headers: &[(&str, Align)],
    rows: &[Vec<String>],
) -> fmt::Result {
    let mut widths: Vec<usize> = headers.iter().map(|(h, _)| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header_cells: Vec<String> = headers.iter().map(|(h, _)| (*h).to_owned()).collect();
    for row in std::iter::once(&header_cells).chain(rows) {
        let mut line = String::new();
        for ((cell, width), (_, align)) in row.iter().zip(&widths).zip(headers) {
            match align {
                Align::Left => write!(line, "  {cell:<width$}")?,
                Align::Right => write!(line, "  {cell:>width$}")?,
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// A cell for a value that may be missing: the value, or `-`.
pub(crate) fn or_dash<T: fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let rows = vec![
            vec!["/a".to_owned(), "1".to_owned(), "ok".to_owned()],
            vec!["/longer".to_owned(), "1234".to_owned(), "".to_owned()],
        ];
        let headers = [
            ("ROUTE", Align::Left),
            ("N", Align::Right),
            ("V", Align::Left),
        ];
        let mut out = String::new();
        write(&mut out, &headers, &rows).unwrap();
        assert_eq!(
            out,
            "  ROUTE       N  V\n  /a          1  ok\n  /longer  1234\n"
        );
    }
}
