//! Long-context tasks generated from a seed (nothing downloaded): passkey retrieval, multi-needle
//! retrieval (k of N), key-value retrieval over UUID-like pairs (as InfiniteBench Retrieve.KV),
//! counting stars (as Counting-Stars) and variable tracking (as RULER). Each case is a plain-text
//! completion prompt of a requested length in tokens with its needles at a requested depth.
//!
//! Lengths are hit by measuring with the model's tokenizer (any `Fn(&str) -> usize`): filler
//! sentences (or key-value pairs) are added until the prompt is within 1% of the target, so
//! the counts are right for the model that runs them.

use std::ops::Range;

use serde::Serialize;

use crate::{Error, Result};

/// The task families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TaskKind {
    /// A 5-digit pass key in repetitive filler.
    Passkey,
    /// `n` needles "the special magic number for <word> is <7 digits>", `k` of them asked for.
    MultiNeedle { n: usize, k: usize },
    /// A JSON object of UUID-like key-value pairs; one key asked for.
    KvRetrieval,
    /// `n` sentences "the little penguin counted <c> stars" spread from the depth on; the counts
    /// asked for in order.
    CountingStars { n: usize },
    /// A chain of `hops` variable assignments (`VAR A = 12345`, `VAR B = VAR A`, ...) from the
    /// depth on; every variable holding the value asked for.
    VariableTracking { hops: usize },
}

impl TaskKind {
    /// Short stable name (file names, JSON, CLI).
    pub fn name(&self) -> &'static str {
        match self {
            TaskKind::Passkey => "passkey",
            TaskKind::MultiNeedle { .. } => "multi_needle",
            TaskKind::KvRetrieval => "kv_retrieval",
            TaskKind::CountingStars { .. } => "counting_stars",
            TaskKind::VariableTracking { .. } => "variable_tracking",
        }
    }

    /// The task of a CLI name, with its default sizes (4 needles with 2 asked for, 4 star
    /// sentences, 4 hops).
    pub fn parse(name: &str) -> Result<TaskKind> {
        Ok(match name {
            "passkey" => TaskKind::Passkey,
            "multi_needle" => TaskKind::MultiNeedle { n: 4, k: 2 },
            "kv_retrieval" => TaskKind::KvRetrieval,
            "counting_stars" => TaskKind::CountingStars { n: 4 },
            "variable_tracking" => TaskKind::VariableTracking { hops: 4 },
            other => return Err(Error::arg("task", format!("`{other}`: use passkey, multi_needle, kv_retrieval, counting_stars or variable_tracking"))),
        })
    }

    pub const ALL: [&'static str; 5] = ["passkey", "multi_needle", "kv_retrieval", "counting_stars", "variable_tracking"];
}

/// One generated case.
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    pub task: TaskKind,
    pub seed: u64,
    /// Requested prompt length in tokens and needle depth (0 = start of the context, 1 = end).
    pub target_tokens: usize,
    pub depth: f64,
    /// The whole prompt (context and question); the model continues it.
    pub prompt: String,
    /// Expected answers: every one must appear in the reply (in this order for counting stars).
    pub answers: Vec<String>,
    /// Byte ranges in `prompt` of the facts the answers come from (diagnosis: their tokens are
    /// followed through ESA's selection). The first is the one placed at `depth`.
    pub needles: Vec<Range<usize>>,
    /// Byte range of the context the depth is measured over.
    pub context: Range<usize>,
}

/// splitmix64: cases are reproducible from their seed on every platform.
struct Rng(crate::session::SplitMix);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(crate::session::SplitMix::from_state(seed ^ 0x5EED_0F_E5A_1337))
    }
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// Uniform in lo..hi.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
    fn hex(&mut self, n: usize) -> String {
        (0..n).map(|_| char::from_digit(self.range(0, 16) as u32, 16).unwrap()).collect()
    }
    fn uuid(&mut self) -> String {
        format!("{}-{}-{}-{}-{}", self.hex(8), self.hex(4), self.hex(4), self.hex(4), self.hex(12))
    }
}

/// `n` different numbers in lo..hi (hi - lo >= n), as strings.
fn distinct(rng: &mut Rng, n: usize, lo: u64, hi: u64) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(n);
    while out.len() < n {
        let v = rng.range(lo, hi).to_string();
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

/// The classic passkey filler (Mohtashami and Jaggi 2023), one sentence at a time.
const FILLER: [&str; 5] = ["The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again."];

const WORDS: [&str; 24] = [
    "apple", "river", "castle", "violin", "harbor", "meadow", "lantern", "falcon", "glacier", "orchid", "pepper", "compass", "thunder", "velvet", "saddle", "marble",
    "canyon", "biscuit", "anchor", "tulip", "quartz", "walnut", "hammock", "zephyr",
];

const VAR_NAMES: [&str; 12] = ["QXZ", "BLM", "TRV", "KHO", "WPE", "DNU", "FYG", "JSA", "MCI", "RVL", "ZEB", "HUT"];

/// A prompt being assembled: header, a body of units with facts inserted at unit indices,
/// question. `units[i]` is one filler sentence or key-value pair.
struct Layout {
    header: String,
    question: String,
    /// Separator between units.
    sep: &'static str,
    /// (fraction of the body, text): a fact goes before the unit at round(fraction * units).
    facts: Vec<(f64, String)>,
}

impl Layout {
    /// Unit indices of the facts for `n` units, from their fractions.
    fn positions(&self, n: usize) -> Vec<usize> {
        self.facts.iter().map(|(f, _)| ((f * n as f64).round() as usize).min(n)).collect()
    }

    /// Render with `n` units from `unit(i)`, fact i before unit `at[i]`; returns the prompt, the
    /// facts' byte ranges (in the order given) and the context range.
    fn render(&self, n: usize, at: &[usize], unit: &mut dyn FnMut(usize) -> String) -> (String, Vec<Range<usize>>, Range<usize>) {
        let mut order: Vec<(usize, usize)> = at.iter().enumerate().map(|(i, &u)| (u.min(n), i)).collect();
        order.sort();
        let mut s = self.header.clone();
        let c0 = s.len();
        let mut ranges = vec![0..0; self.facts.len()];
        let mut next = 0;
        for u in 0..=n {
            while next < order.len() && order[next].0 == u {
                let i = order[next].1;
                let start = s.len();
                s.push_str(&self.facts[i].1);
                ranges[i] = start..s.len();
                s.push_str(self.sep);
                next += 1;
            }
            if u < n {
                s.push_str(&unit(u));
                s.push_str(self.sep);
            }
        }
        let c1 = s.len();
        s.push_str(&self.question);
        (s, ranges, c0..c1)
    }
}

/// Depth of fact `i` (byte ranges `facts` in `prompt`): the filler tokens of the context before
/// it over all filler tokens of the context, facts left out of both (0: first, 1: last), as
/// needle-in-a-haystack tests define it.
pub fn depth_of(count: &dyn Fn(&str) -> usize, prompt: &str, facts: &[Range<usize>], i: usize, context: &Range<usize>) -> f64 {
    let c0 = count(&prompt[..context.start]);
    let fact_tokens = |pred: &dyn Fn(&Range<usize>) -> bool| facts.iter().filter(|r| pred(r)).map(|r| count(&prompt[r.clone()])).sum::<usize>();
    let start = facts[i].start;
    let before = count(&prompt[..start]).saturating_sub(c0).saturating_sub(fact_tokens(&|r| r.end <= start));
    let all = count(&prompt[..context.end]).saturating_sub(c0).saturating_sub(fact_tokens(&|_| true));
    before as f64 / all.max(1) as f64
}

type Rendered = (String, Vec<Range<usize>>, Range<usize>);

/// Fill `layout` to `target` tokens: a first guess from the tokens per unit, then corrections
/// from the measured length until within 1% (or the unit count stops changing). Then the first
/// fact is moved until its depth in tokens of the context is within 1% of the asked one (the
/// other facts before it shift it otherwise).
fn fill(layout: &Layout, target: usize, count: &dyn Fn(&str) -> usize, unit: &mut dyn FnMut(usize) -> String) -> Result<Rendered> {
    let sample = 64;
    let (base, _, _) = layout.render(0, &layout.positions(0), unit);
    let base_tokens = count(&base);
    let (with, _, _) = layout.render(sample, &layout.positions(sample), unit);
    let per_unit = ((count(&with).saturating_sub(base_tokens)) as f64 / sample as f64).max(0.5);
    if base_tokens >= target {
        return Err(Error::arg("length", format!("{target} tokens is shorter than the task's fixed text ({base_tokens} tokens)")));
    }
    let mut n = ((target - base_tokens) as f64 / per_unit).round() as usize;
    let mut best: Option<(usize, usize)> = None;
    for _ in 0..8 {
        let r = layout.render(n, &layout.positions(n), unit);
        let got = count(&r.0);
        let err = got.abs_diff(target);
        if best.is_none_or(|(e, _)| err < e) {
            best = Some((err, n));
        }
        if (err as f64) <= 0.01 * target as f64 {
            break;
        }
        let step = ((target as f64 - got as f64) / per_unit).round() as i64;
        let m = (n as i64 + if step == 0 { (target as i64 - got as i64).signum() } else { step }).max(0) as usize;
        if m == n {
            break;
        }
        n = m;
    }
    let n = best.map_or(n, |b| b.1);
    let mut at = layout.positions(n);
    let want = layout.facts[0].0;
    let mut out = layout.render(n, &at, unit);
    for _ in 0..4 {
        let (p, r, c) = &out;
        let d = depth_of(count, p, r, 0, c);
        if (d - want).abs() <= 0.01 {
            break;
        }
        let total = count(&p[..c.end]).saturating_sub(count(&p[..c.start])).max(1);
        let moved = (at[0] as f64 + (want - d) * total as f64 / per_unit).round().clamp(0.0, n as f64) as usize;
        if moved == at[0] {
            break;
        }
        at[0] = moved;
        out = layout.render(n, &at, unit);
    }
    Ok(out)
}

/// Generate one case of `task` with a prompt of about `target_tokens` tokens (as `count` measures
/// them) and its first needle at `depth` (0..=1) of the context.
pub fn generate(task: TaskKind, target_tokens: usize, depth: f64, seed: u64, count: &dyn Fn(&str) -> usize) -> Result<Case> {
    if !(0.0..=1.0).contains(&depth) {
        return Err(Error::arg("depth", format!("{depth}: must be in 0..=1")));
    }
    let mut rng = Rng::new(seed ^ (target_tokens as u64).rotate_left(20) ^ (depth * 1000.0) as u64);
    let filler = |i: usize| FILLER[i % FILLER.len()].to_string();
    let (layout, answers, mut unit): (Layout, Vec<String>, Box<dyn FnMut(usize) -> String>) = match task {
        TaskKind::Passkey => {
            let key = rng.range(10_000, 100_000).to_string();
            let layout = Layout {
                header: "There is an important piece of information hidden inside a lot of irrelevant text. Find it and memorize it. I will quiz you about it.\n\n".into(),
                question: "\n\nWhat is the pass key? The pass key is".into(),
                sep: " ",
                facts: vec![(depth, format!("The pass key is {key}. Remember it."))],
            };
            (layout, vec![key], Box::new(filler))
        }
        TaskKind::MultiNeedle { n, k } => {
            if n == 0 || k == 0 || k > n || n > WORDS.len() {
                return Err(Error::arg("multi_needle", format!("k {k} of n {n}: need 1 <= k <= n <= {}", WORDS.len())));
            }
            let mut words: Vec<&str> = WORDS.to_vec();
            for i in 0..n {
                let j = rng.range(i as u64, words.len() as u64) as usize;
                words.swap(i, j);
            }
            let values = distinct(&mut rng, n, 1_000_000, 10_000_000);
            // The first needle (asked for first) at the depth, the others at seeded depths.
            let facts = (0..n).map(|i| (if i == 0 { depth } else { rng.range(0, 1001) as f64 / 1000.0 }, format!("The special magic number for {} is {}.", words[i], values[i]))).collect();
            let asked = words[..k].join(", ");
            let layout = Layout {
                header: "Some special magic numbers are hidden inside the following text. Make sure to memorize them. I will quiz you about the numbers afterwards.\n\n".into(),
                question: format!("\n\nWhat are the special magic numbers for {asked}? The special magic numbers for {asked} are:"),
                sep: " ",
                facts,
            };
            (layout, values[..k].to_vec(), Box::new(filler))
        }
        TaskKind::KvRetrieval => {
            let (key, value) = (rng.uuid(), rng.uuid());
            let layout = Layout {
                header: "Extract the value corresponding to the specified key in the JSON object below.\n\n{".into(),
                question: format!("}}\n\nKey: \"{key}\"\nThe value associated with the specified key is: \""),
                sep: ", ",
                facts: vec![(depth, format!("\"{key}\": \"{value}\""))],
            };
            // Pairs from their own stream, so they do not depend on how often fill renders.
            let pair_seed = rng.next();
            let unit = move |i: usize| {
                let mut r = Rng::new(pair_seed ^ (i as u64).wrapping_mul(0x9E37_79B9));
                format!("\"{}\": \"{}\"", r.uuid(), r.uuid())
            };
            (layout, vec![value], Box::new(unit))
        }
        TaskKind::CountingStars { n } => {
            if n == 0 {
                return Err(Error::arg("counting_stars", "needs at least one star sentence"));
            }
            // Spread from the depth to the end of the context, in order of appearance.
            let counts = distinct(&mut rng, n, 2, 100.max(n as u64 + 2));
            let facts = (0..n).map(|i| (depth + (1.0 - depth) * i as f64 / n as f64, format!("The little penguin counted {} stars.", counts[i]))).collect();
            let layout = Layout {
                header: "A little penguin is counting the stars in the sky. Each time it counts, it says how many stars it counted. Remember every count.\n\n".into(),
                question: format!("\n\nList the {n} numbers of stars the little penguin counted, in order. The little penguin counted:"),
                sep: " ",
                facts,
            };
            (layout, counts, Box::new(filler))
        }
        TaskKind::VariableTracking { hops } => {
            if hops == 0 || hops > VAR_NAMES.len() {
                return Err(Error::arg("variable_tracking", format!("{hops} hops: need 1..={}", VAR_NAMES.len())));
            }
            let mut names: Vec<&str> = VAR_NAMES.to_vec();
            for i in 0..hops {
                let j = rng.range(i as u64, names.len() as u64) as usize;
                names.swap(i, j);
            }
            let value = rng.range(10_000, 100_000).to_string();
            let facts = (0..hops)
                .map(|i| {
                    let text = if i == 0 { format!("VAR {} = {value}.", names[0]) } else { format!("VAR {} = VAR {}.", names[i], names[i - 1]) };
                    (depth + (1.0 - depth) * i as f64 / hops as f64, text)
                })
                .collect();
            let layout = Layout {
                header: "Memorize and track the chain of variable assignments hidden in the following text.\n\n".into(),
                question: format!("\n\nQuestion: Find all variables that are assigned the value {value} in the text above. Answer: According to the chain of variable assignments in the text above, {hops} variables are assigned the value {value}, they are:"),
                sep: " ",
                facts,
            };
            (layout, names[..hops].iter().map(|s| s.to_string()).collect(), Box::new(filler))
        }
    };
    let (prompt, needles, context) = fill(&layout, target_tokens, count, &mut *unit)?;
    Ok(Case { task, seed, target_tokens, depth, prompt, answers, needles, context })
}
