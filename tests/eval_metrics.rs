//! Evaluation metrics against the reference libraries (rouge-score 0.1.2, sacrebleu 2.6.0), and the
//! training-metrics JSONL writer and its PNG plot.
//!
//! The reference numbers below were produced by this snippet (python3, `pip install rouge-score
//! sacrebleu`):
//!
//! ```python
//! from rouge_score import rouge_scorer
//! import sacrebleu
//! from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
//! PAIRS = [...]  # the (prediction, reference) pairs of PAIRS below
//! scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])  # use_stemmer=False
//! for pred, ref in PAIRS:
//!     s = scorer.score(ref, pred)  # score(target, prediction)
//!     print([(round(s[k].precision, 12), round(s[k].recall, 12), round(s[k].fmeasure, 12))
//!            for k in ("rouge1", "rouge2", "rougeL")])
//! preds, refs = [p for p, _ in PAIRS], [r for _, r in PAIRS]
//! b = sacrebleu.corpus_bleu(preds, [refs])
//! print(repr(b.score), b.counts, b.totals, b.sys_len, b.ref_len, b.bp)
//! for i in range(len(PAIRS)):
//!     b = sacrebleu.corpus_bleu([preds[i]], [[refs[i]]]); print(i, repr(b.score), b.sys_len, b.ref_len)
//! b = sacrebleu.corpus_bleu(["the cat sat on the mat", "a dog ran"],
//!                           [["the cat is on the mat", "a dog ran home"], ["there is a cat on the mat", "the dog ran"]])
//! print(repr(b.score), b.sys_len, b.ref_len)
//! tok = Tokenizer13a()
//! for s in TOKENIZER_CASES: print(repr(tok(s.rstrip())))
//! ```

use gkd::eval::{
    corpus_bleu, corpus_bleu_multi, exact_match, exact_match_rate, final_answer, mean_rouge, rouge,
    tokenize_13a,
};
use gkd::metrics::{plot_curves, read_metrics, MetricsWriter, Source, StepMetrics};
use serde_json::{json, Map, Value};
use std::path::PathBuf;

const PAIRS: [(&str, &str); 7] = [
    ("The cat sat on the mat.", "The cat is sitting on the mat."),
    ("the the the the", "The quick brown fox jumps over the lazy dog"),
    (
        "It costs $3,000.50 -- a 10-day trip (non-refundable)!",
        "The 10-day trip costs $3,000.50, non-refundable.",
    ),
    ("Ana buys 3 pens at $4 each. 3 * 4 = 12.\n#### 12", "The pens cost 3 * 4 = 12.\n#### 12"),
    ("Café au lait, s'il vous plaît & merci", "cafe au lait s'il vous plait &amp; merci"),
    ("", "nothing matches here"),
    ("A B C D E F", "a b c d e f"),
];

/// (precision, recall, F) of ROUGE-1, ROUGE-2, ROUGE-L per pair, from rouge-score.
const ROUGE_REF: [[(f64, f64, f64); 3]; 7] = [
    [
        (0.833333333333, 0.714285714286, 0.769230769231),
        (0.6, 0.5, 0.545454545455),
        (0.833333333333, 0.714285714286, 0.769230769231),
    ],
    [(0.5, 0.222222222222, 0.307692307692), (0.0, 0.0, 0.0), (0.5, 0.222222222222, 0.307692307692)],
    [
        (0.818181818182, 0.9, 0.857142857143),
        (0.6, 0.666666666667, 0.631578947368),
        (0.545454545455, 0.6, 0.571428571429),
    ],
    [
        (0.454545454545, 0.714285714286, 0.555555555556),
        (0.3, 0.5, 0.375),
        (0.454545454545, 0.714285714286, 0.555555555556),
    ],
    [
        (0.666666666667, 0.666666666667, 0.666666666667),
        (0.5, 0.5, 0.5),
        (0.666666666667, 0.666666666667, 0.666666666667),
    ],
    [(0.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)],
    [(1.0, 1.0, 1.0), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0)],
];

#[test]
fn rouge_matches_rouge_score() {
    for ((pred, reference), expected) in PAIRS.iter().zip(ROUGE_REF) {
        let r = rouge(pred, reference);
        for (got, (p, rc, f)) in [r.rouge1, r.rouge2, r.rouge_l].iter().zip(expected) {
            for (g, e) in [(got.precision, p), (got.recall, rc), (got.fmeasure, f)] {
                assert!((g - e).abs() < 1e-6, "{pred:?} vs {reference:?}: {got:?}, expected {expected:?}");
            }
        }
    }
    let preds: Vec<&str> = PAIRS.iter().map(|p| p.0).collect();
    let refs: Vec<&str> = PAIRS.iter().map(|p| p.1).collect();
    let mean = mean_rouge(&preds, &refs).unwrap();
    let expected_f: f64 = ROUGE_REF.iter().map(|r| r[2].2).sum::<f64>() / 7.0;
    assert!((mean.rouge_l.fmeasure - expected_f).abs() < 1e-6);
    assert!(mean_rouge(&preds, &refs[..3]).is_err());
    assert!(mean_rouge::<&str, &str>(&[], &[]).is_err());
}

#[test]
fn bleu_matches_sacrebleu() {
    let preds: Vec<&str> = PAIRS.iter().map(|p| p.0).collect();
    let refs: Vec<&str> = PAIRS.iter().map(|p| p.1).collect();
    let b = corpus_bleu(&preds, &refs).unwrap();
    assert!((b.score - 35.31890898616369).abs() < 1e-4, "{b:?}");
    assert_eq!(b.counts, [33, 22, 14, 10]);
    assert_eq!(b.totals, [60, 54, 48, 42]);
    assert_eq!((b.sys_len, b.ref_len), (60, 59));
    assert_eq!(b.brevity_penalty, 1.0);

    // Each pair alone: exp smoothing (orders with no match), brevity penalty, empty hypothesis, no match at all.
    let single: [(f64, u64, u64); 7] = [
        (42.38365628278778, 7, 8),
        (4.576506607182439, 4, 9),
        (26.58483576665878, 14, 11),
        (52.20981806658137, 20, 14),
        (16.51582159006904, 9, 8),
        (0.0, 0, 3),
        (0.0, 6, 6),
    ];
    for ((pred, reference), (score, sys_len, ref_len)) in PAIRS.iter().zip(single) {
        let b = corpus_bleu(&[pred], &[reference]).unwrap();
        assert!((b.score - score).abs() < 1e-4, "{pred:?}: {b:?}, expected {score}");
        assert_eq!((b.sys_len, b.ref_len), (sys_len, ref_len), "{pred:?}");
    }

    // Two references per hypothesis: clipping by the max count over references, closest length.
    let b = corpus_bleu_multi(
        &["the cat sat on the mat", "a dog ran"],
        &[["the cat is on the mat", "there is a cat on the mat"], ["a dog ran home", "the dog ran"]],
    )
    .unwrap();
    assert!((b.score - 45.358328887808035).abs() < 1e-4, "{b:?}");
    assert_eq!((b.sys_len, b.ref_len), (9, 9));
    assert!(corpus_bleu(&["a"], &["a", "b"]).is_err());
}

#[test]
fn tokenizer_13a_matches_sacrebleu() {
    let cases = [
        (
            "Hello, world! (test) 3.5-4 a.b,c 1,000.00 x-y 5- \"q\" &amp; &lt;tag&gt; <skipped> end-\nline",
            "Hello , world ! ( test ) 3.5 - 4 a . b , c 1,000.00 x-y 5 - \" q \" & < tag > endline",
        ),
        (
            "e.g. U.S.A., 2-3... [a]{b}~c|d`e^f_g\\h @i #j %k",
            "e . g . U . S . A . , 2 - 3 . . . [ a ] { b } ~ c | d ` e ^ f _ g \\ h @ i # j % k",
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(tokenize_13a(input.trim_end()), expected);
    }
}

#[test]
fn exact_match_compares_final_answers() {
    assert_eq!(final_answer("3 * 4 = 12.\n#### 12\n"), "12");
    assert_eq!(final_answer("#### 1\n#### 2 "), "2");
    assert_eq!(final_answer("  no marker here \n"), "no marker here");
    assert!(exact_match("work\n####  42 ", "other work\n#### 42"));
    assert!(!exact_match("#### 42", "#### 41"));
    assert!(exact_match(" 42\n", "42"));
    assert!(!exact_match("#### 42 and more", "#### 42"));
    let rate = exact_match_rate(&["#### 1", "#### 2", "x"], &["#### 1", "#### 3", "x"]).unwrap();
    assert!((rate - 2.0 / 3.0).abs() < 1e-12);
    assert!(exact_match_rate(&["a"], &["a", "b"]).is_err());
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gkd-metrics-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn step(step: u64, loss: f64) -> StepMetrics {
    let mut extra = Map::new();
    extra.insert("divergence".into(), json!("jsd"));
    if step % 10 == 0 {
        extra.insert("eval_exact_match".into(), json!(step as f64 / 100.0));
    }
    StepMetrics { step, loss, source: Source::Student, tokens: 128, lr: 1e-4, seconds: 0.5, extra }
}

#[test]
fn metrics_lines_have_the_required_fields() {
    let dir = scratch("fields");
    let path = dir.join("metrics.jsonl");
    let mut w = MetricsWriter::create(&path).unwrap();
    w.write(&step(1, 2.5)).unwrap();
    w.write(&StepMetrics { source: Source::Dataset, ..step(2, f64::NAN) }).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        lines[0],
        json!({"step": 1, "loss": 2.5, "source": "student", "tokens": 128, "lr": 1e-4, "seconds": 0.5, "divergence": "jsd"})
    );
    assert_eq!(lines[1]["source"], "dataset");
    assert_eq!(lines[1]["loss"], Value::Null, "NaN is written as null");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn resume_drops_steps_after_the_checkpoint_and_a_cut_line() {
    let dir = scratch("resume");
    let path = dir.join("metrics.jsonl");
    let mut w = MetricsWriter::create(&path).unwrap();
    for s in 1..=6 {
        w.write(&step(s, 3.0 - s as f64 * 0.1)).unwrap();
    }
    drop(w);
    // A kill mid-write leaves half a line.
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"step\": 7, \"lo");
    std::fs::write(&path, &text).unwrap();

    let mut w = MetricsWriter::resume(&path, 4).unwrap();
    w.write(&step(5, 9.0)).unwrap();
    let rows = read_metrics(&path).unwrap();
    let steps: Vec<u64> = rows.iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [1, 2, 3, 4, 5]);
    assert_eq!(rows[4]["loss"], 9.0);
    // A missing file starts anew.
    let fresh = dir.join("new.jsonl");
    MetricsWriter::resume(&fresh, 10).unwrap().write(&step(11, 1.0)).unwrap();
    assert_eq!(read_metrics(&fresh).unwrap().len(), 1);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn plot_writes_a_png() {
    let dir = scratch("plot");
    let path = dir.join("metrics.jsonl");
    let mut w = MetricsWriter::create(&path).unwrap();
    for s in 1..=120 {
        let loss = 2.0 * (-(s as f64) / 40.0).exp() + 0.1 * ((s * 7919 % 13) as f64 / 13.0);
        w.write(&step(s, if s == 57 { f64::INFINITY } else { loss })).unwrap();
    }
    let png = dir.join("metrics.png");
    plot_curves(&path, &png).unwrap();
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    // IHDR: width and height, big-endian, at bytes 16..24.
    let (width, height) = (
        u32::from_be_bytes(bytes[16..20].try_into().unwrap()),
        u32::from_be_bytes(bytes[20..24].try_into().unwrap()),
    );
    assert_eq!((width, height), (960, 840), "loss and eval panels");
    assert!(bytes.len() > 10_000 && bytes.len() < 2_000_000, "{} bytes", bytes.len());

    assert!(plot_curves(&path, &dir.join("metrics.jpg")).is_err());
    let empty = dir.join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    assert!(plot_curves(&empty, &png).unwrap_err().to_string().contains("no finite loss"));
    if std::env::var_os("GKD_KEEP_PLOT").is_none() {
        std::fs::remove_dir_all(dir).ok();
    }
}
