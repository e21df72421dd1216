//! Generation: batching, continuous batching and the order of the prompts do not change results;
//! returned log-probabilities are the model's and the sampler's; sampling draws from
//! softmax(logits / T) restricted by top-k / top-p (chi-square tests, which a wrong temperature
//! fails).

mod model_common;

use gkd::generate::{generate, Completion, GenerateConfig, Sampler};
use gkd::model::Model;
use gkd::tensor::SampleSpec;
use gkd::Tensor;
use model_common::{chi_square, critical, expected, fixture, reference};

fn greedy_cfg(max_new_tokens: usize, stop_tokens: Vec<u32>) -> GenerateConfig {
    GenerateConfig::new(max_new_tokens, Sampler::greedy(), 0, stop_tokens)
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
    let cfg = GenerateConfig::new(10, Sampler { temperature: 1.3, top_k: 40, top_p: 0.95 }, 11, vec![]);
    let out = generate(&model, &prompts, &cfg).unwrap();
    for (p, c) in prompts.iter().zip(&out) {
        let full: Vec<u32> = p.iter().chain(&c.ids).copied().collect();
        let scored = model.logprobs(&[full]).unwrap().remove(0);
        for (i, lp) in c.logprobs.iter().enumerate() {
            let want = scored[p.len() - 1 + i];
            assert!((lp - want).abs() < 1e-4, "token {i}: {lp} vs {want}");
        }
        // Under the sampler, T = 1.3 and the filters move each token's log-probability away
        // from the model's (by much more than the tolerance above on this fixture).
        assert_eq!(c.sampler_logprobs.len(), c.ids.len());
        assert!(c.sampler_logprobs.iter().all(|&q| q <= 0.0 && q.is_finite()));
        let moved =
            c.sampler_logprobs.iter().zip(&c.logprobs).map(|(q, p)| (q - p).abs()).fold(0.0, f64::max);
        assert!(moved > 1e-2, "sampler log-probabilities equal the model's ({moved})");
    }
    // At T = 1 without filters the two are the same distribution.
    let plain = generate(&model, &prompts, &GenerateConfig::new(6, Sampler::default(), 3, vec![])).unwrap();
    for c in &plain {
        for (q, p) in c.sampler_logprobs.iter().zip(&c.logprobs) {
            assert!((q - p).abs() < 1e-5, "T = 1: {q} vs {p}");
        }
    }
    // Same seed, same samples; another seed, other samples.
    assert_eq!(generate(&model, &prompts, &cfg).unwrap(), out);
    let other = generate(&model, &prompts, &GenerateConfig { seed: 12, ..cfg.clone() }).unwrap();
    assert_ne!(other, out);
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
    let (draws, vocab) = (20_000, logits.len());
    // One row per draw, each at its own position: one call of the sampling op.
    let rows = Tensor::from_vec(logits.repeat(draws), [draws, vocab]).unwrap();
    let seq = Tensor::from_u32(&vec![9; draws], gkd::Device::Cpu).unwrap();
    let pos = Tensor::from_u32(&(0..draws as u32).collect::<Vec<_>>(), gkd::Device::Cpu).unwrap();
    for (t, k, p) in SETTINGS {
        let spec = SampleSpec { vocab, temperature: t, top_k: k, top_p: p, seed: 1234 };
        let (tokens, _) = rows.sample(&seq, &pos, &spec).unwrap();
        let mut counts = vec![0usize; vocab];
        tokens.to_vec_u32().unwrap().iter().for_each(|&x| counts[x as usize] += 1);
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

/// Generation with every prompt at once, with fewer slots than prompts (a finished slot takes the
/// next prompt), with the prompts in another order, and one prompt at a time: the same tokens and
/// log-probabilities for each prompt. A stop token ends some sequences early, so slots free up at
/// different steps and refills start while other rows decode.
#[test]
fn batch_size_and_prompt_order_do_not_change_samples() {
    for name in ["llama", "gpt2"] {
        let model = Model::load(&fixture(name)).unwrap();
        let prompts: Vec<Vec<u32>> = vec![
            vec![3, 9, 27],
            vec![5],
            vec![3, 9, 27],
            vec![40, 41, 42, 43, 44],
            vec![8, 8],
            vec![1, 2],
            vec![77],
            vec![6, 60, 66],
        ];
        let base = GenerateConfig::new(9, Sampler { temperature: 1.1, top_k: 0, top_p: 0.97 }, 21, vec![]);
        let probe = generate(&model, &prompts, &base).unwrap();
        // The most common second token stops some sequences at step 2 and not others.
        let stop = probe[0].ids[1];
        let cfg = GenerateConfig { stop_tokens: vec![stop], ..base };
        let all = generate(&model, &prompts, &cfg).unwrap();
        assert!(all.iter().any(|c| c.stopped) && all.iter().any(|c| !c.stopped), "{name}: stops vary");
        // Copies of one prompt get different samples.
        assert_ne!(probe[0].ids, probe[2].ids, "{name}: identical prompts drew the same tokens");
        let same = |a: &[Completion], b: &[Completion], what: &str| {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_eq!((&x.ids, x.stopped), (&y.ids, y.stopped), "{name} {what}: prompt {i}");
                for (p, q) in x
                    .logprobs
                    .iter()
                    .zip(&y.logprobs)
                    .chain(x.sampler_logprobs.iter().zip(&y.sampler_logprobs))
                {
                    assert!((p - q).abs() < 1e-5, "{name} {what}: prompt {i}: {p} vs {q}");
                }
            }
        };
        for batch_size in [1, 3, 8] {
            let out = generate(&model, &prompts, &GenerateConfig { batch_size, ..cfg.clone() }).unwrap();
            same(&all, &out, &format!("batch size {batch_size}"));
        }
        let order = [6, 2, 7, 0, 4, 1, 5, 3];
        let shuffled: Vec<Vec<u32>> = order.iter().map(|&i| prompts[i].clone()).collect();
        let out = generate(&model, &shuffled, &GenerateConfig { batch_size: 3, ..cfg.clone() }).unwrap();
        // Back in the original order; of the two copies of [3, 9, 27] (shuffled to places 1 and
        // 3), the first in the list gets the first copy's sample wherever it stands.
        let back: Vec<Completion> = [1, 5, 3, 7, 4, 6, 0, 2].iter().map(|&j| out[j].clone()).collect();
        same(&all, &back, "shuffled");
    }
}

/// The same through `generate`: many copies of one prompt, one new token each, each copy keyed
/// by its occurrence.
#[test]
fn generate_draws_match_the_restricted_softmax() {
    let model = Model::load(&fixture("gpt2")).unwrap();
    let prompt = vec![0u32, 40, 41, 42];
    let logits = next_token_logits(&model, &prompt);
    let (t, k, p) = (1.2, 30, 0.95);
    let cfg = GenerateConfig::new(1, Sampler { temperature: t, top_k: k, top_p: p }, 5, vec![]);
    let out = generate(&model, &vec![prompt; 4000], &cfg).unwrap();
    let mut counts = vec![0usize; logits.len()];
    out.iter().for_each(|c| counts[c.ids[0] as usize] += 1);
    let (stat, df, impossible) = chi_square(&counts, &expected(&logits, t, k, p));
    assert!(!impossible && stat < critical(df), "chi2 {stat:.1} on {df} df");
    let (wrong, wdf, _) = chi_square(&counts, &expected(&logits, t * 1.5, k, p));
    assert!(wrong > critical(wdf), "a wrong temperature is not rejected (chi2 {wrong:.1})");
}
