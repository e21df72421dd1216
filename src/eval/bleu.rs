//! Corpus BLEU with `sacrebleu`'s defaults: the `13a` tokenizer (mteval-v13a, as WMT), case
//! sensitive, n-grams up to 4, the `exp` smoothing (mteval's NIST method: the k-th n-gram order
//! with no match gets precision 1 / (2^k · total)), and the brevity penalty exp(1 − r/c) when the
//! hypotheses are shorter than the references. Scores are on sacrebleu's 0–100 scale.
//!
//! Counts are summed over the corpus before the precisions are taken (corpus BLEU, not the mean of
//! sentence BLEU). With several references per hypothesis, n-gram counts are clipped by the
//! maximum count in any reference and the reference length is the closest one (ties: the shorter).

use crate::error::Result;
use std::collections::HashMap;

const MAX_ORDER: usize = 4;

#[derive(Clone, Debug, PartialEq)]
pub struct Bleu {
    /// BLEU, 0–100.
    pub score: f64,
    /// Matched n-grams of each order, n = 1..4, summed over the corpus.
    pub counts: [u64; MAX_ORDER],
    /// Hypothesis n-grams of each order.
    pub totals: [u64; MAX_ORDER],
    /// The (smoothed) precision of each order, 0–100.
    pub precisions: [f64; MAX_ORDER],
    pub brevity_penalty: f64,
    /// Hypothesis tokens.
    pub sys_len: u64,
    /// Reference tokens (the closest reference of each hypothesis).
    pub ref_len: u64,
}

/// Corpus BLEU of `hypotheses` against one reference each.
pub fn corpus_bleu<H: AsRef<str>, R: AsRef<str>>(hypotheses: &[H], references: &[R]) -> Result<Bleu> {
    super::check_pairs("BLEU", hypotheses.len(), references.len())?;
    let refs: Vec<[&str; 1]> = references.iter().map(|r| [r.as_ref()]).collect();
    corpus_bleu_multi(hypotheses, &refs)
}

/// Corpus BLEU with any number of references per hypothesis: `references[i]` holds those of
/// `hypotheses[i]` (sacrebleu takes the same data transposed, one stream per reference).
pub fn corpus_bleu_multi<H: AsRef<str>, R: AsRef<[S]>, S: AsRef<str>>(
    hypotheses: &[H],
    references: &[R],
) -> Result<Bleu> {
    super::check_pairs("BLEU", hypotheses.len(), references.len())?;
    let mut counts = [0u64; MAX_ORDER];
    let mut totals = [0u64; MAX_ORDER];
    let (mut sys_len, mut ref_len) = (0u64, 0u64);
    for (i, (hyp, refs)) in hypotheses.iter().zip(references).enumerate() {
        let refs = refs.as_ref();
        if refs.is_empty() {
            return Err(crate::error::Error::Msg(format!("BLEU: hypothesis {i} has no reference")));
        }
        let hyp = tokenize_13a(rstrip(hyp.as_ref()));
        let hyp: Vec<&str> = hyp.split(' ').filter(|t| !t.is_empty()).collect();
        let ref_tokens: Vec<String> = refs.iter().map(|r| tokenize_13a(rstrip(r.as_ref()))).collect();
        let mut ref_max: HashMap<&[&str], u64> = HashMap::new();
        let mut ref_lens = Vec::with_capacity(refs.len());
        let ref_split: Vec<Vec<&str>> =
            ref_tokens.iter().map(|r| r.split(' ').filter(|t| !t.is_empty()).collect()).collect();
        for r in &ref_split {
            ref_lens.push(r.len());
            for (gram, c) in ngram_counts(r) {
                let e = ref_max.entry(gram).or_insert(0);
                *e = (*e).max(c);
            }
        }
        for (gram, c) in ngram_counts(&hyp) {
            totals[gram.len() - 1] += c;
            counts[gram.len() - 1] += c.min(ref_max.get(gram).copied().unwrap_or(0));
        }
        sys_len += hyp.len() as u64;
        ref_len += closest_ref_len(hyp.len(), &ref_lens) as u64;
    }
    Ok(score_from_stats(counts, totals, sys_len, ref_len))
}

/// sacrebleu's `BLEU.compute_bleu` with `smooth_method='exp'`, `effective_order=False`.
fn score_from_stats(counts: [u64; MAX_ORDER], totals: [u64; MAX_ORDER], sys_len: u64, ref_len: u64) -> Bleu {
    let brevity_penalty = if sys_len < ref_len {
        if sys_len > 0 {
            (1.0 - ref_len as f64 / sys_len as f64).exp()
        } else {
            0.0
        }
    } else {
        1.0
    };
    let mut precisions = [0.0f64; MAX_ORDER];
    let mut bleu = Bleu { score: 0.0, counts, totals, precisions, brevity_penalty, sys_len, ref_len };
    if counts.iter().all(|&c| c == 0) {
        return bleu;
    }
    let mut smooth = 1.0f64;
    for n in 0..MAX_ORDER {
        if totals[n] == 0 {
            break;
        }
        precisions[n] = if counts[n] == 0 {
            smooth *= 2.0;
            100.0 / (smooth * totals[n] as f64)
        } else {
            100.0 * counts[n] as f64 / totals[n] as f64
        };
    }
    // sacrebleu's my_log: log(0) is taken as -9999999999, which sends the score to 0.
    let log_sum: f64 = precisions.iter().map(|&p| if p == 0.0 { -9_999_999_999.0 } else { p.ln() }).sum();
    bleu.precisions = precisions;
    bleu.score = brevity_penalty * (log_sum / MAX_ORDER as f64).exp();
    bleu
}

/// Every n-gram of order 1..4 with its count (keys of different orders never collide).
fn ngram_counts<'a>(tokens: &'a [&'a str]) -> HashMap<&'a [&'a str], u64> {
    let mut counts = HashMap::new();
    for n in 1..=MAX_ORDER.min(tokens.len()) {
        for gram in tokens.windows(n) {
            *counts.entry(gram).or_insert(0) += 1;
        }
    }
    counts
}

fn closest_ref_len(hyp_len: usize, ref_lens: &[usize]) -> usize {
    let mut best: Option<(usize, usize)> = None; // (difference, length)
    for &len in ref_lens {
        let diff = hyp_len.abs_diff(len);
        best = match best {
            Some((d, l)) if diff > d || (diff == d && len >= l) => Some((d, l)),
            _ => Some((diff, len)),
        };
    }
    best.map_or(0, |(_, l)| l)
}

/// Python's `str.isspace`: Rust's whitespace plus the ASCII separators U+001C..U+001F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn rstrip(s: &str) -> &str {
    s.trim_end_matches(is_py_space)
}

/// sacrebleu's `Tokenizer13a`: tokens separated by single spaces.
pub fn tokenize_13a(line: &str) -> String {
    let mut line = line.replace("<skipped>", "").replace("-\n", "").replace('\n', " ");
    if line.contains('&') {
        line = line.replace("&quot;", "\"").replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">");
    }
    let chars: Vec<char> = format!(" {line} ").chars().collect();

    // 1. Punctuation and symbols other than ' , - . become separate tokens:
    //    ([\{-\~\[-\` -\&\(-\+\:-\@\/]) → ' \1 '
    let mut out = Vec::with_capacity(chars.len() * 2);
    for &c in &chars {
        if matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/') {
            out.extend([' ', c, ' ']);
        } else {
            out.push(c);
        }
    }
    // 2. Period and comma unless preceded by a digit: ([^0-9])([\.,]) → '\1 \2 '
    let out =
        substitute_pairs(&out, |a, b| !a.is_ascii_digit() && matches!(b, '.' | ','), |a, b| [a, ' ', b, ' ']);
    // 3. Period and comma unless followed by a digit: ([\.,])([^0-9]) → ' \1 \2'
    let out =
        substitute_pairs(&out, |a, b| matches!(a, '.' | ',') && !b.is_ascii_digit(), |a, b| [' ', a, ' ', b]);
    // 4. Dash preceded by a digit: ([0-9])(-) → '\1 \2 '
    let out = substitute_pairs(&out, |a, b| a.is_ascii_digit() && b == '-', |a, b| [a, ' ', b, ' ']);

    let text: String = out.into_iter().collect();
    text.split(is_py_space).filter(|t| !t.is_empty()).collect::<Vec<_>>().join(" ")
}

/// Python `re.sub` for a two-character pattern: leftmost matches, never overlapping.
fn substitute_pairs(
    chars: &[char],
    matches: impl Fn(char, char) -> bool,
    replace: impl Fn(char, char) -> [char; 4],
) -> Vec<char> {
    let mut out = Vec::with_capacity(chars.len() + chars.len() / 2);
    let mut i = 0;
    while i < chars.len() {
        if i + 1 < chars.len() && matches(chars[i], chars[i + 1]) {
            out.extend(replace(chars[i], chars[i + 1]));
            i += 2;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}
