//! JSONL reading/writing with its error messages, and the arithmetic task: every answer
//! recomputed from the drawn numbers, every worked step re-checked, determinism per seed.

use gkd::data::arithmetic::{self, Op, Template};
use gkd::data::{parse_jsonl, read_jsonl, write_jsonl, Example};
use std::path::PathBuf;

mod cli_common;

use cli_common::{fails, ok};

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gkd-data-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn err(text: &str, require_completion: bool) -> String {
    parse_jsonl(text, "d.jsonl", require_completion).unwrap_err().to_string()
}

#[test]
fn reads_examples_skipping_blank_lines_and_extra_fields() {
    let text = "\u{feff}{\"prompt\": \"a\", \"completion\": \"b\"}\n\n   \n{\"prompt\": \"c\", \"completion\": \"d\", \"id\": 7}\r\n";
    let ex = parse_jsonl(text, "d.jsonl", true).unwrap();
    assert_eq!(ex, vec![Example::new("a", "b"), Example::new("c", "d")]);
}

#[test]
fn completion_is_optional_only_when_not_required() {
    let text = "{\"prompt\": \"a\"}\n{\"prompt\": \"b\", \"completion\": null}\n{\"prompt\": \"c\", \"completion\": \"d\"}\n";
    let ex = parse_jsonl(text, "d.jsonl", false).unwrap();
    assert_eq!(ex, vec![Example::prompt_only("a"), Example::prompt_only("b"), Example::new("c", "d")]);
    let e = err(text, true);
    assert!(e.starts_with("d.jsonl:1: missing field \"completion\""), "{e}");
}

#[test]
fn errors_name_file_line_and_problem() {
    let e = err("{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\" \"x\"}\n", true);
    assert!(e.starts_with("d.jsonl:2: invalid JSON at column 11"), "{e}");
    let e = err("\n{\"completion\": \"b\"}\n", true);
    assert_eq!(e, "d.jsonl:2: missing field \"prompt\"");
    let e = err("{\"prompt\": 3, \"completion\": \"b\"}", true);
    assert_eq!(e, "d.jsonl:1: field \"prompt\" must be a string, found a number");
    let e = err("{\"prompt\": \"a\", \"completion\": [\"b\"]}", false);
    assert_eq!(e, "d.jsonl:1: field \"completion\" must be a string, found an array");
    let e = err("[\"a\", \"b\"]", true);
    assert!(e.starts_with("d.jsonl:1: expected a JSON object"), "{e}");
    let e = err("\n  \n", true);
    assert!(e.starts_with("d.jsonl: no examples"), "{e}");
}

#[test]
fn file_errors_name_the_path() {
    let dir = scratch("paths");
    let missing = dir.join("missing.jsonl");
    let e = read_jsonl(&missing, true).unwrap_err().to_string();
    assert!(e.contains("cannot read") && e.contains("missing.jsonl"), "{e}");
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, b"{\"prompt\": \"ok\", \"completion\": \"x\"}\n{\"prompt\": \"\xff\"}\n").unwrap();
    let e = read_jsonl(&bad, true).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}:2: not valid UTF-8", bad.display())), "{e}");
}

#[test]
fn write_then_read_round_trips() {
    let dir = scratch("roundtrip");
    let path = dir.join("out.jsonl");
    let examples = vec![
        Example::new("Q: 2 + 2?\n", "4\n#### 4"),
        Example::prompt_only("only a prompt, with \"quotes\" and ünïcödé"),
    ];
    write_jsonl(&path, &examples).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 2);
    assert!(!text.lines().nth(1).unwrap().contains("completion"));
    assert_eq!(read_jsonl(&path, false).unwrap(), examples);
    std::fs::remove_dir_all(dir).ok();
}

/// The answer from the drawn numbers alone, written out per template, independent of the
/// generator's step-by-step solution.
fn expected_answer(t: &Template) -> i64 {
    match *t {
        Template::Shopping { count_a, price_a, count_b, price_b, paid } => {
            let total = count_a * price_a + count_b * price_b;
            paid.map_or(total, |p| p - total)
        }
        Template::Change { count, price, paid } => paid - count * price,
        Template::Sharing { bags, per_bag, eaten, friends } => {
            assert_eq!((bags * per_bag - eaten) % friends, 0, "sharing must divide exactly: {t:?}");
            (bags * per_bag - eaten) / friends
        }
        Template::Rate { per_hour, hours_a, hours_b } => per_hour * (hours_a + hours_b),
        Template::Travel { speed_a, hours_a, speed_b, hours_b } => speed_a * hours_a + speed_b * hours_b,
        Template::Spending { money, spent, earned } => {
            assert_eq!((money - spent) % 2, 0, "half of the rest must be whole: {t:?}");
            (money - spent) / 2 + earned.unwrap_or(0)
        }
        Template::Savings { per_week, weeks, spent } => per_week * weeks - spent,
        Template::Chairs { rows, per_row, broken, added } => rows * per_row - broken + added,
    }
}

/// The numbers the template drew, each of which must appear in the prompt.
fn drawn_numbers(t: &Template) -> Vec<i64> {
    match *t {
        Template::Shopping { count_a, price_a, count_b, price_b, paid } => {
            [count_a, price_a, count_b, price_b].into_iter().chain(paid).collect()
        }
        Template::Change { count, price, paid } => vec![count, price, paid],
        Template::Sharing { bags, per_bag, eaten, friends } => vec![bags, per_bag, eaten, friends],
        Template::Rate { per_hour, hours_a, hours_b } => vec![per_hour, hours_a, hours_b],
        Template::Travel { speed_a, hours_a, speed_b, hours_b } => vec![speed_a, hours_a, speed_b, hours_b],
        Template::Spending { money, spent, earned } => [money, spent].into_iter().chain(earned).collect(),
        Template::Savings { per_week, weeks, spent } => vec![per_week, weeks, spent],
        Template::Chairs { rows, per_row, broken, added } => vec![rows, per_row, broken, added],
    }
}

/// Parses "... a op b = r." at the end of a solution line.
fn parse_step(line: &str) -> (i64, char, i64, i64) {
    let words: Vec<&str> = line.trim_end_matches('.').split_whitespace().collect();
    let n = words.len();
    assert!(n >= 5 && words[n - 2] == "=", "not a step line: {line:?}");
    let num = |s: &str| s.parse::<i64>().unwrap_or_else(|_| panic!("not a number {s:?} in {line:?}"));
    (num(words[n - 5]), words[n - 4].chars().next().unwrap(), num(words[n - 3]), num(words[n - 1]))
}

#[test]
fn every_arithmetic_answer_is_right() {
    let problems = arithmetic::generate(2000, 7);
    let mut templates = std::collections::HashSet::new();
    for p in &problems {
        templates.insert(std::mem::discriminant(&p.template));
        let answer = expected_answer(&p.template);
        assert_eq!(p.answer, answer, "{p:?}");
        assert!(answer >= 0, "{p:?}");
        for x in drawn_numbers(&p.template) {
            assert!(p.prompt.contains(&x.to_string()), "{x} not in {:?}", p.prompt);
        }
        assert!(p.prompt.ends_with('\n') && p.prompt.len() < 200, "{:?}", p.prompt);

        // The text: 2-4 step lines, each arithmetically right, then "#### answer".
        let lines: Vec<&str> = p.completion.lines().collect();
        let (last, steps) = lines.split_last().unwrap();
        assert_eq!(*last, format!("#### {answer}"));
        assert!((2..=4).contains(&steps.len()), "{:?}", p.completion);
        assert_eq!(steps.len(), p.steps.len());
        let mut known: Vec<i64> = drawn_numbers(&p.template);
        known.push(2); // "half"
        for (line, step) in steps.iter().zip(&p.steps) {
            let (a, op, b, r) = parse_step(line);
            let value = match op {
                '+' => a + b,
                '-' => a - b,
                '*' => a * b,
                '/' => {
                    assert!(b != 0 && a % b == 0, "{line}");
                    a / b
                }
                other => panic!("operator {other} in {line}"),
            };
            assert_eq!(value, r, "{line}");
            assert!((0..=300).contains(&r) && a <= 300 && b <= 300, "{line}");
            assert!(known.contains(&a) && known.contains(&b), "{line}: operand neither given nor computed");
            known.push(r);
            assert_eq!((step.a, step.op.symbol(), step.b, step.result), (a, op, b, r));
        }
        assert_eq!(p.steps.last().unwrap().result, answer);
        assert_eq!(gkd::eval::final_answer(&p.completion), answer.to_string());
    }
    assert_eq!(templates.len(), 8, "every template is drawn");
    assert!(problems.iter().any(|p| p.steps.iter().any(|s| s.op == Op::Div)));
}

#[test]
fn arithmetic_is_deterministic_per_seed() {
    let a = arithmetic::generate_examples(300, 42);
    assert_eq!(a, arithmetic::generate_examples(300, 42));
    assert_ne!(a, arithmetic::generate_examples(300, 43));
    // A prefix of a longer run is the shorter run.
    assert_eq!(a[..100], arithmetic::generate_examples(100, 42)[..]);

    let dir = scratch("determinism");
    let (p1, p2) = (dir.join("a.jsonl"), dir.join("b.jsonl"));
    write_jsonl(&p1, &a).unwrap();
    write_jsonl(&p2, &arithmetic::generate_examples(300, 42)).unwrap();
    assert_eq!(std::fs::read(&p1).unwrap(), std::fs::read(&p2).unwrap());
    assert_eq!(read_jsonl(&p1, true).unwrap(), a);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn cli_writes_the_same_file_for_the_same_seed() {
    let dir = scratch("cli");
    let out = dir.join("arith.jsonl");
    let stdout = ok(&["data", "arithmetic", "--n", "25", "--seed", "5"]);
    ok(&["data", "arithmetic", "--n", "25", "--seed", "5", "--out", out.to_str().unwrap()]);
    assert_eq!(stdout.as_bytes(), std::fs::read(&out).unwrap());
    let parsed = read_jsonl(&out, true).unwrap();
    assert_eq!(parsed, arithmetic::generate_examples(25, 5));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn held_out_problems_exclude_training_prompts() {
    let train: std::collections::HashSet<String> =
        arithmetic::generate(3000, 1).into_iter().map(|p| p.prompt).collect();
    let held_out = arithmetic::generate_excluding(500, 2, &train).unwrap();
    assert_eq!(held_out.len(), 500);
    assert!(held_out.iter().all(|p| !train.contains(&p.prompt)));
    assert_eq!(held_out, arithmetic::generate_excluding(500, 2, &train).unwrap());
    // Without exclusions it is `generate`.
    assert_eq!(
        arithmetic::generate_excluding(50, 2, &Default::default()).unwrap(),
        arithmetic::generate(50, 2)
    );

    let dir = scratch("exclude");
    let (train_file, test_file) = (dir.join("train.jsonl"), dir.join("test.jsonl"));
    ok(&["data", "arithmetic", "--n", "400", "--seed", "1", "--out", train_file.to_str().unwrap()]);
    ok(&[
        "data",
        "arithmetic",
        "--n",
        "100",
        "--seed",
        "2",
        "--exclude",
        train_file.to_str().unwrap(),
        "--out",
        test_file.to_str().unwrap(),
    ]);
    let train: Vec<Example> = read_jsonl(&train_file, true).unwrap();
    let test: Vec<Example> = read_jsonl(&test_file, true).unwrap();
    assert_eq!(test.len(), 100);
    assert!(test.iter().all(|t| train.iter().all(|e| e.prompt != t.prompt)));
    // A bad exclude file is a clear error.
    let stderr =
        fails(&["data", "arithmetic", "--n", "5", "--exclude", dir.join("none.jsonl").to_str().unwrap()]);
    assert!(stderr.contains("none.jsonl"));
    std::fs::remove_dir_all(dir).ok();
}
