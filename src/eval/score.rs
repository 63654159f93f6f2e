//! Scoring a reply against a case's answers (each score in 0..=1).
//!
//! - passkey, multi-needle, key-value, variable tracking: the fraction of the expected answers
//!   found in the reply as whole tokens (a digit string not inside a longer one, a name not inside
//!   a longer word), as RULER's `string_match_all`;
//! - counting stars: the numbers in the reply, in order, compared position by position with the
//!   counts (Counting-Stars' accuracy); extra numbers do not count, missing ones score 0.

use super::tasks::{Case, TaskKind};

/// Whether `needle` occurs in `hay` with no alphanumeric character right before or after it.
fn contains_whole(hay: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return false;
    }
    let b = hay.as_bytes();
    let mut from = 0;
    while let Some(i) = hay[from..].find(needle) {
        let (s, e) = (from + i, from + i + needle.len());
        let before = s == 0 || !b[s - 1].is_ascii_alphanumeric();
        let after = e == b.len() || !b[e].is_ascii_alphanumeric();
        if before && after {
            return true;
        }
        from = s + 1;
    }
    false
}

/// The unsigned integers in `text`, in order.
pub fn numbers(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for ch in text.chars() {
        if ch.is_ascii_digit() {
            cur.push(ch);
        } else if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The score of `reply` for `case`, in 0..=1.
pub fn score(case: &Case, reply: &str) -> f64 {
    if case.answers.is_empty() {
        return 0.0;
    }
    match case.task {
        TaskKind::CountingStars { .. } => {
            let got = numbers(reply);
            let hits = case.answers.iter().zip(&got).filter(|(a, g)| a == g).count();
            hits as f64 / case.answers.len() as f64
        }
        _ => case.answers.iter().filter(|a| contains_whole(reply, a)).count() as f64 / case.answers.len() as f64,
    }
}
