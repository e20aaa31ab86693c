//! Aligned text tables and `key: value` blocks for the human output.

/// A table: a header, rows, and which columns hold numbers (right-aligned).
/// Columns are as wide as their widest cell, two spaces apart; the last
/// column is not padded.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>], numeric: &[usize]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            let pad = w.saturating_sub(cell.chars().count());
            if numeric.contains(&i) {
                out.push_str(&" ".repeat(pad));
                out.push_str(cell);
            } else {
                out.push_str(cell);
                if i != last {
                    out.push_str(&" ".repeat(pad));
                }
            }
            if i != last {
                out.push_str("  ");
            }
        }
        out
    };
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let mut text = line(&header);
    for row in rows {
        text.push('\n');
        text.push_str(&line(row));
    }
    text
}

/// `key:  value` lines, the values aligned.
pub(crate) fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{:<width$}  {v}", format!("{k}:")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `-` for a missing value.
pub(crate) fn or_dash(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_numbers_go_right() {
        let rows = vec![
            vec!["alice@n".to_owned(), "3".to_owned(), "x".to_owned()],
            vec!["b@n".to_owned(), "12".to_owned(), "yz".to_owned()],
        ];
        let text = table(&["USER", "N", "LAST"], &rows, &[1]);
        assert_eq!(text, "USER      N  LAST\nalice@n   3  x\nb@n      12  yz");
        assert_eq!(
            fields(&[("a", "1".into()), ("bbb", "2".into())]),
            "a:    1\nbbb:  2"
        );
    }
}
