//! The built-in task: GSM8K-like multi-step arithmetic word problems, small enough for a model of
//! a few million parameters trained on a CPU.
//!
//! Each problem is 2–4 integer steps over small numbers (every number at most 300, exact
//! divisions only, no negative results). The prompt is the question and a newline; the completion is a short worked
//! solution, one step per line, then `#### <answer>` as in GSM8K:
//!
//! ```text
//! prompt:     Ana buys 3 pens at $4 each and 2 cups at $5 each. How many dollars does she spend?\n
//! completion: The pens cost 3 * 4 = 12.\nThe cups cost 2 * 5 = 10.\nIn total 12 + 10 = 22.\n#### 22
//! ```
//!
//! Generation is seeded (`StdRng`, rand 0.9) and deterministic: the same `(n, seed)` gives the same
//! problems, byte for byte.

use super::Example;
use crate::error::{Error, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashSet;
use std::fmt;

/// A problem's template and the numbers drawn for it: enough to recompute the answer
/// independently of the text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Template {
    /// Buys `count_a` items at `price_a` and `count_b` at `price_b`: the total, or the change
    /// from `paid` when present.
    Shopping { count_a: i64, price_a: i64, count_b: i64, price_b: i64, paid: Option<i64> },
    /// Buys `count` items at `price` each and pays with `paid`: the change.
    Change { count: i64, price: i64, paid: i64 },
    /// `bags` bags of `per_bag`, `eaten` eaten, the rest shared equally among `friends`.
    Sharing { bags: i64, per_bag: i64, eaten: i64, friends: i64 },
    /// `per_hour` items an hour for `hours_a` hours and then `hours_b` hours.
    Rate { per_hour: i64, hours_a: i64, hours_b: i64 },
    /// `speed_a` km/h for `hours_a` hours, then `speed_b` km/h for `hours_b` hours.
    Travel { speed_a: i64, hours_a: i64, speed_b: i64, hours_b: i64 },
    /// Starts with `money`, spends `spent`, then half of the rest; then earns `earned` if present.
    Spending { money: i64, spent: i64, earned: Option<i64> },
    /// Saves `per_week` for `weeks` weeks, then spends `spent`.
    Savings { per_week: i64, weeks: i64, spent: i64 },
    /// `rows` rows of `per_row` chairs, `broken` removed, `added` new ones.
    Chairs { rows: i64, per_row: i64, broken: i64, added: i64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Add,
    Sub,
    Mul,
    Div,
}

impl Op {
    pub fn symbol(self) -> char {
        match self {
            Op::Add => '+',
            Op::Sub => '-',
            Op::Mul => '*',
            Op::Div => '/',
        }
    }
}

/// One line of a worked solution: `a op b = result`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub a: i64,
    pub op: Op,
    pub b: i64,
    pub result: i64,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {} = {}", self.a, self.op.symbol(), self.b, self.result)
    }
}

/// A generated problem: its text, its worked solution and the structure behind them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub template: Template,
    /// The question, ending in a newline.
    pub prompt: String,
    /// The worked solution, one step a line, ending in `#### <answer>`.
    pub completion: String,
    pub steps: Vec<Step>,
    pub answer: i64,
}

impl Problem {
    pub fn example(&self) -> Example {
        Example::new(self.prompt.clone(), self.completion.clone())
    }
}

/// `n` problems from `seed`.
pub fn generate(n: usize, seed: u64) -> Vec<Problem> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| problem(&mut rng)).collect()
}

/// `n` problems from `seed`, as prompt/completion examples.
pub fn generate_examples(n: usize, seed: u64) -> Vec<Example> {
    generate(n, seed).iter().map(Problem::example).collect()
}

/// `n` problems from `seed` whose prompts are not in `exclude` (a training set's prompts, so that
/// a held-out set shares no question with it). Deterministic like `generate`; an error if
/// 100·n + 1000 draws do not find `n` new problems.
pub fn generate_excluding(n: usize, seed: u64, exclude: &HashSet<String>) -> Result<Vec<Problem>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut problems = Vec::with_capacity(n);
    let max_draws = n.saturating_mul(100).saturating_add(1000);
    for _ in 0..max_draws {
        if problems.len() == n {
            break;
        }
        let p = problem(&mut rng);
        if !exclude.contains(&p.prompt) {
            problems.push(p);
        }
    }
    if problems.len() < n {
        return Err(Error::Msg(format!(
            "arithmetic: found only {} of {n} problems outside the {} excluded prompts in {max_draws} draws",
            problems.len(),
            exclude.len()
        )));
    }
    Ok(problems)
}

const PEOPLE: [(&str, &str); 8] = [
    ("Ana", "she"),
    ("Ben", "he"),
    ("Mia", "she"),
    ("Leo", "he"),
    ("Sara", "she"),
    ("Tom", "he"),
    ("Lily", "she"),
    ("Sam", "he"),
];
const ITEMS: [&str; 8] = ["pens", "cups", "books", "apples", "toys", "cards", "hats", "balls"];
const FRUITS: [&str; 4] = ["apples", "pears", "plums", "figs"];
const MADE: [&str; 4] = ["toys", "cups", "boxes", "bags"];

fn pick<'a, T>(rng: &mut StdRng, xs: &'a [T]) -> &'a T {
    &xs[rng.random_range(0..xs.len())]
}

/// The worked solution as it is built: each step's arithmetic is done here, once, and its line written.
struct Solution {
    lines: Vec<String>,
    steps: Vec<Step>,
}

impl Solution {
    fn new() -> Solution {
        Solution { lines: Vec::new(), steps: Vec::new() }
    }

    /// Appends "`label` a op b = r." and returns r.
    fn step(&mut self, label: &str, a: i64, op: Op, b: i64) -> i64 {
        let result = match op {
            Op::Add => a + b,
            Op::Sub => a - b,
            Op::Mul => a * b,
            Op::Div => a / b, // divisors are drawn to divide exactly and are never 0
        };
        let step = Step { a, op, b, result };
        self.lines.push(format!("{label} {step}."));
        self.steps.push(step);
        result
    }

    fn finish(self, template: Template, prompt: String, answer: i64) -> Problem {
        let completion = format!("{}\n#### {answer}", self.lines.join("\n"));
        Problem { template, prompt: format!("{prompt}\n"), completion, steps: self.steps, answer }
    }
}

/// One problem drawn from `rng`.
pub fn problem(rng: &mut StdRng) -> Problem {
    let (name, pron) = *pick(rng, &PEOPLE);
    let mut s = Solution::new();
    match rng.random_range(0..8) {
        0 => {
            let (count_a, price_a, count_b, price_b) = (
                rng.random_range(2..=6),
                rng.random_range(2..=9),
                rng.random_range(2..=6),
                rng.random_range(2..=9),
            );
            let a = rng.random_range(0..ITEMS.len());
            let b = (a + rng.random_range(1..ITEMS.len())) % ITEMS.len();
            let (item_a, item_b) = (ITEMS[a], ITEMS[b]);
            let paid = rng.random_bool(0.5).then(|| pay_with(rng, count_a * price_a + count_b * price_b));
            let cost_a = s.step(&format!("The {item_a} cost"), count_a, Op::Mul, price_a);
            let cost_b = s.step(&format!("The {item_b} cost"), count_b, Op::Mul, price_b);
            let total = s.step("In total", cost_a, Op::Add, cost_b);
            let mut prompt = format!("{name} buys {count_a} {item_a} at ${price_a} each and {count_b} {item_b} at ${price_b} each.");
            let answer = match paid {
                Some(paid) => {
                    prompt += &format!(
                        " {} pays with ${paid}. How many dollars of change does {pron} get?",
                        cap(pron)
                    );
                    s.step("The change is", paid, Op::Sub, total)
                }
                None => {
                    prompt += &format!(" How many dollars does {pron} spend?");
                    total
                }
            };
            s.finish(Template::Shopping { count_a, price_a, count_b, price_b, paid }, prompt, answer)
        }
        1 => {
            let (count, price) = (rng.random_range(2..=9), rng.random_range(2..=9));
            let paid = pay_with(rng, count * price);
            let item = pick(rng, &ITEMS);
            let total = s.step("The cost is", count, Op::Mul, price);
            let answer = s.step("The change is", paid, Op::Sub, total);
            let prompt = format!("{name} buys {count} {item} at ${price} each and pays with ${paid}. How many dollars of change does {pron} get?");
            s.finish(Template::Change { count, price, paid }, prompt, answer)
        }
        2 => {
            let (bags, per_bag, friends) =
                (rng.random_range(2..=6), rng.random_range(3..=9), rng.random_range(2..=5));
            let remainder = (bags * per_bag) % friends;
            let eaten = if remainder == 0 { friends } else { remainder };
            let fruit = pick(rng, &FRUITS);
            let total = s.step("There are", bags, Op::Mul, per_bag);
            let rest = s.step("After eating,", total, Op::Sub, eaten);
            let answer = s.step("Each friend gets", rest, Op::Div, friends);
            let prompt = format!("{name} has {bags} bags with {per_bag} {fruit} in each. {} eats {eaten} and shares the rest equally among {friends} friends. How many {fruit} does each friend get?", cap(pron));
            s.finish(Template::Sharing { bags, per_bag, eaten, friends }, prompt, answer)
        }
        3 => {
            let (per_hour, hours_a, hours_b) =
                (rng.random_range(2..=12), rng.random_range(2..=8), rng.random_range(2..=8));
            let thing = pick(rng, &MADE);
            let hours = s.step("It works", hours_a, Op::Add, hours_b);
            let answer = s.step("It makes", hours, Op::Mul, per_hour);
            let prompt = format!("A machine makes {per_hour} {thing} per hour. It works {hours_a} hours on Monday and {hours_b} hours on Tuesday. How many {thing} does it make?");
            s.finish(Template::Rate { per_hour, hours_a, hours_b }, prompt, answer)
        }
        4 => {
            let (speed_a, hours_a) = (rng.random_range(10..=60), rng.random_range(1..=3));
            let (speed_b, hours_b) = (rng.random_range(10..=60), rng.random_range(1..=2));
            let first = s.step("First it drives", speed_a, Op::Mul, hours_a);
            let then = s.step("Then it drives", speed_b, Op::Mul, hours_b);
            let answer = s.step("In total", first, Op::Add, then);
            let prompt = format!(
                "A car drives {speed_a} km per hour for {}, then {speed_b} km per hour for {}. How many km does it drive?",
                count(hours_a, "hour"),
                count(hours_b, "hour")
            );
            s.finish(Template::Travel { speed_a, hours_a, speed_b, hours_b }, prompt, answer)
        }
        5 => {
            let money = rng.random_range(5..=20) * 4;
            let spent = rng.random_range(1..money / 8) * 2; // keeps the rest even and positive
            let earned = rng.random_bool(0.5).then(|| rng.random_range(2..=20));
            let rest = s.step("After the book", money, Op::Sub, spent);
            let half = s.step("The bag costs", rest, Op::Div, 2);
            let left = s.step("Left:", rest, Op::Sub, half);
            let mut prompt = format!(
                "{name} has ${money}. {} spends ${spent} on a book and half of the rest on a bag.",
                cap(pron)
            );
            let answer = match earned {
                Some(earned) => {
                    prompt +=
                        &format!(" Then {pron} earns ${earned}. How many dollars does {pron} have now?");
                    s.step("Now", left, Op::Add, earned)
                }
                None => {
                    prompt += " How many dollars are left?";
                    left
                }
            };
            s.finish(Template::Spending { money, spent, earned }, prompt, answer)
        }
        6 => {
            let (per_week, weeks) = (rng.random_range(2..=10), rng.random_range(2..=10));
            let spent = rng.random_range(1..per_week * weeks);
            let saved = s.step("Saved:", per_week, Op::Mul, weeks);
            let answer = s.step("Left:", saved, Op::Sub, spent);
            let prompt = format!("{name} saves ${per_week} each week for {weeks} weeks, then spends ${spent}. How many dollars are left?");
            s.finish(Template::Savings { per_week, weeks, spent }, prompt, answer)
        }
        _ => {
            let (rows, per_row) = (rng.random_range(2..=12), rng.random_range(3..=12));
            let (broken, added) = (rng.random_range(1..=5), rng.random_range(1..=9));
            let chairs = s.step("There are", rows, Op::Mul, per_row);
            let good = s.step("Without the broken ones", chairs, Op::Sub, broken);
            let answer = s.step("With the new ones", good, Op::Add, added);
            let breaks =
                if broken == 1 { "1 chair breaks".to_string() } else { format!("{broken} chairs break") };
            let added_text =
                if added == 1 { "1 new chair is".to_string() } else { format!("{added} new chairs are") };
            let prompt = format!(
                "A hall has {rows} rows of {per_row} chairs. {breaks} and {added_text} added. How many chairs are there now?"
            );
            s.finish(Template::Chairs { rows, per_row, broken, added }, prompt, answer)
        }
    }
}

/// A note that covers `total`: 20, 50, 100 or 200 dollars, drawn among those larger than it.
fn pay_with(rng: &mut StdRng, total: i64) -> i64 {
    let notes: Vec<i64> = [20, 50, 100, 200].into_iter().filter(|&p| p > total).collect();
    if notes.is_empty() {
        return total + 1; // unreachable for the ranges drawn here; keeps the change positive
    }
    *pick(rng, &notes)
}

/// "1 hour", "2 hours".
fn count(n: i64, noun: &str) -> String {
    if n == 1 {
        format!("{n} {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn cap(word: &str) -> String {
    let mut c = word.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}
