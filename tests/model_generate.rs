//! Generation: batching does not change results; returned log-probabilities are the model's;
//! sampling draws from softmax(logits / T) restricted by top-k / top-p (chi-square tests, which a
//! wrong temperature fails).

mod model_common;

use gkd::generate::{generate, sequence_rng, GenerateConfig, Sampler};
use gkd::model::Model;
use model_common::{fixture, reference};

fn greedy_cfg(max_new_tokens: usize, stop_tokens: Vec<u32>) -> GenerateConfig {
    GenerateConfig { max_new_tokens, sampler: Sampler::greedy(), seed: 0, stop_tokens }
}

/// Prompts of mixed lengths in one batch give, token for token, what each gives alone; one
/// sequence stops early on a stop token while the others go on.
#[test]
fn batched_greedy_equals_one_by_one() {
    for name in ["gpt2", "llama"] {
        let model = Model::load(&fixture(name)).unwrap();
        let mut prompts = reference(name).sequences;
        prompts.push(vec![7]);
        // A stop token that some sequence s first produces at step ≥ 2.
        let probes = generate(&model, &prompts, &greedy_cfg(12, vec![])).unwrap();
        let (s, at) = probes
            .iter()
            .enumerate()
            .find_map(|(s, c)| (2..c.ids.len()).find(|&i| !c.ids[..i].contains(&c.ids[i])).map(|i| (s, i)))
            .expect("some sequence produces a new token after step 2");
        let cfg = greedy_cfg(12, vec![probes[s].ids[at]]);
        let batched = generate(&model, &prompts, &cfg).unwrap();
        assert!(
            batched[s].stopped && batched[s].ids == probes[s].ids[..=at],
            "{name}: sequence {s} ends at its stop token"
        );
        for (p, b) in prompts.iter().zip(&batched) {
            let alone = generate(&model, std::slice::from_ref(p), &cfg).unwrap().remove(0);
            assert_eq!(alone.ids, b.ids, "{name}: prompt of length {}", p.len());
            assert_eq!(alone.stopped, b.stopped);
            for (x, y) in alone.logprobs.iter().zip(&b.logprobs) {
                assert!((x - y).abs() < 1e-5, "{name}: logprob {x} vs {y}");
            }
            assert!(b.stopped || b.ids.len() == 12);
        }
    }
}

/// The log-probability beside each sampled token is the model's own, as scoring the whole
/// sequence gives it (temperature and top-k do not change it).
#[test]
fn sampled_logprobs_equal_scored_logprobs() {
    let model = Model::load(&fixture("qwen2")).unwrap();
    let prompts = vec![vec![5u32, 9, 33], vec![100u32]];
    let cfg = GenerateConfig {
        max_new_tokens: 10,
        sampler: Sampler { temperature: 1.3, top_k: 40, top_p: 0.95 },
        seed: 11,
        stop_tokens: vec![],
    };
    let out = generate(&model, &prompts, &cfg).unwrap();
    for (p, c) in prompts.iter().zip(&out) {
        let full: Vec<u32> = p.iter().chain(&c.ids).copied().collect();
        let scored = model.logprobs(&[full]).unwrap().remove(0);
        for (i, lp) in c.logprobs.iter().enumerate() {
            let want = scored[p.len() - 1 + i];
            assert!((lp - want).abs() < 1e-4, "token {i}: {lp} vs {want}");
        }
    }
    // Same seed, same samples; another seed, other samples.
    assert_eq!(generate(&model, &prompts, &cfg).unwrap(), out);
    let other = generate(&model, &prompts, &GenerateConfig { seed: 12, ..cfg.clone() }).unwrap();
    assert_ne!(other, out);
}

/// softmax(logits / T), top-k then top-p, computed independently of the sampler.
fn expected(logits: &[f32], t: f64, top_k: usize, top_p: f64) -> Vec<f64> {
    let z: Vec<f64> = logits.iter().map(|&x| x as f64 / t).collect();
    let mut order: Vec<usize> = (0..z.len()).collect();
    order.sort_by(|&a, &b| z[b].partial_cmp(&z[a]).unwrap());
    let k = if top_k == 0 { z.len() } else { top_k };
    let kth = z[order[k - 1]];
    let m = z[order[0]];
    let w: Vec<f64> = z.iter().map(|&x| if x >= kth { (x - m).exp() } else { 0.0 }).collect();
    let total: f64 = w.iter().sum();
    let mut p: Vec<f64> = w.iter().map(|x| x / total).collect();
    if top_p < 1.0 {
        let mut mass = 0.0;
        for &i in &order {
            if mass >= top_p {
                p[i] = 0.0;
            }
            mass += w[i] / total;
        }
        let total: f64 = p.iter().sum();
        p.iter_mut().for_each(|x| *x /= total);
    }
    p
}

/// Pearson's statistic over bins with an expected count ≥ 5 (the rest pooled), its degrees of
/// freedom, and whether a token of probability 0 was drawn.
fn chi_square(counts: &[usize], probs: &[f64]) -> (f64, usize, bool) {
    let n: usize = counts.iter().sum();
    let (mut stat, mut bins, mut pooled_o, mut pooled_e, mut impossible) = (0.0, 0usize, 0.0, 0.0, false);
    for (&o, &p) in counts.iter().zip(probs) {
        let e = p * n as f64;
        if p == 0.0 {
            impossible |= o > 0;
        } else if e >= 5.0 {
            stat += (o as f64 - e).powi(2) / e;
            bins += 1;
        } else {
            pooled_o += o as f64;
            pooled_e += e;
        }
    }
    if pooled_e > 0.0 {
        stat += (pooled_o - pooled_e).powi(2) / pooled_e;
        bins += 1;
    }
    (stat, bins.saturating_sub(1), impossible)
}

/// The chi-square quantile at 1 − 1e-4 (Wilson–Hilferty; z = 3.719).
fn critical(df: usize) -> f64 {
    let k = df.max(1) as f64;
    let h = 2.0 / (9.0 * k);
    k * (1.0 - h + 3.719 * h.sqrt()).powi(3)
}

fn next_token_logits(model: &Model, prompt: &[u32]) -> Vec<f32> {
    let mut cache = model.new_cache(1, prompt.len()).unwrap();
    model.next_token_logits(&mut cache, &[(0, prompt)]).unwrap().to_vec_f32().unwrap()
}

const SETTINGS: [(f64, usize, f64); 4] = [(0.7, 0, 1.0), (1.5, 20, 1.0), (1.0, 0, 0.8), (0.9, 50, 0.9)];

#[test]
fn sampler_frequencies_match_the_restricted_softmax() {
    let model = Model::load(&fixture("llama")).unwrap();
    let logits = next_token_logits(&model, &[0, 17, 23, 5]);
    let draws = 20_000;
    for (t, k, p) in SETTINGS {
        let sampler = Sampler { temperature: t, top_k: k, top_p: p };
        let mut rng = sequence_rng(1234, 0);
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..draws {
            counts[sampler.sample(&logits, &mut rng) as usize] += 1;
        }
        let (stat, df, impossible) = chi_square(&counts, &expected(&logits, t, k, p));
        eprintln!("T={t} top_k={k} top_p={p}: chi2 = {stat:.1} on {df} df (critical {:.1})", critical(df));
        assert!(!impossible, "T={t} k={k} p={p}: drew a token outside the top-k / top-p set");
        assert!(stat < critical(df), "T={t} k={k} p={p}: chi2 {stat:.1} ≥ {:.1} on {df} df", critical(df));
        // The same draws are far from what a wrong temperature predicts.
        let (wrong, wdf, _) = chi_square(&counts, &expected(&logits, t * 1.25, k, p));
        assert!(
            wrong > critical(wdf),
            "T={t}: a temperature of {} is not rejected (chi2 {wrong:.1})",
            t * 1.25
        );
    }
}

/// The same through `generate`: many copies of one prompt, one new token each, each sequence with
/// its own seeded generator.
#[test]
fn generate_draws_match_the_restricted_softmax() {
    let model = Model::load(&fixture("gpt2")).unwrap();
    let prompt = vec![0u32, 40, 41, 42];
    let logits = next_token_logits(&model, &prompt);
    let (t, k, p) = (1.2, 30, 0.95);
    let cfg = GenerateConfig {
        max_new_tokens: 1,
        sampler: Sampler { temperature: t, top_k: k, top_p: p },
        seed: 5,
        stop_tokens: vec![],
    };
    let out = generate(&model, &vec![prompt; 4000], &cfg).unwrap();
    let mut counts = vec![0usize; logits.len()];
    out.iter().for_each(|c| counts[c.ids[0] as usize] += 1);
    let (stat, df, impossible) = chi_square(&counts, &expected(&logits, t, k, p));
    assert!(!impossible && stat < critical(df), "chi2 {stat:.1} on {df} df");
    let (wrong, wdf, _) = chi_square(&counts, &expected(&logits, t * 1.5, k, p));
    assert!(wrong > critical(wdf), "a wrong temperature is not rejected (chi2 {wrong:.1})");
}
