//! Generation on the GPU against the CPU: greedy decoding token for token on every fixture family
//! (f32 mode), sampled tokens and their log-probabilities, the sampled frequencies (chi-square),
//! invariance to the batch size, to continuous batching with stop tokens and to CUDA graphs, and
//! the returned log-probabilities against `gkd score`'s. Every test prints SKIPPED without a GPU.
//!
//! Tolerances. f32 mode: the GPU's logits differ from the CPU's by summation order only (~1e-6
//! relative), so log-probabilities agree to 1e-4 and a token flips only where two candidates are
//! within that of each other: with O(1) gaps between the top Gumbel-perturbed logits, about 1e-5
//! per token, so one flip in the 32 × 12 sampled tokens below is already unlikely (≤ 1 allowed).

mod common;
mod model_common;

use common::cuda_or_skip;
use gkd::generate::{generate, Completion, GenerateConfig, Sampler};
use gkd::model::Model;
use gkd::{DType, Device};
use model_common::{chi_square, critical, expected, fixture, reference, FAMILIES};

fn on_gpu(model: &Model, dtype: DType) -> Model {
    model.to_compute(Device::Cuda(0), dtype, false).unwrap()
}

fn prompts(family: &str) -> Vec<Vec<u32>> {
    let mut p = reference(family).sequences;
    p.push(vec![7]);
    p.push(vec![1, 2, 3]);
    p
}

/// Tokens equal, both log-probabilities within `tol`.
fn assert_same(a: &[Completion], b: &[Completion], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!((&x.ids, x.stopped), (&y.ids, y.stopped), "{what}: sequence {i}");
        let pairs =
            x.logprobs.iter().zip(&y.logprobs).chain(x.sampler_logprobs.iter().zip(&y.sampler_logprobs));
        for (p, q) in pairs {
            assert!((p - q).abs() <= tol, "{what}: sequence {i}: log-probability {p} vs {q}");
        }
    }
}

#[test]
fn greedy_on_the_gpu_equals_the_cpu_on_every_family() {
    if cuda_or_skip("greedy_on_the_gpu_equals_the_cpu_on_every_family").is_none() {
        return;
    }
    for family in FAMILIES {
        let cpu = Model::load(&fixture(family)).unwrap();
        let gpu = on_gpu(&cpu, DType::F32);
        let p = prompts(family);
        let cfg = GenerateConfig::new(12, Sampler::greedy(), 0, vec![]);
        let want = generate(&cpu, &p, &cfg).unwrap();
        for (batch_size, graphs) in [(0, true), (0, false), (2, true)] {
            let c = GenerateConfig { batch_size, cuda_graphs: graphs, ..cfg.clone() };
            let got = generate(&gpu, &p, &c).unwrap();
            assert_same(&got, &want, 1e-4, &format!("{family} batch {batch_size} graphs {graphs}"));
        }
    }
}

#[test]
fn sampled_tokens_on_the_gpu_follow_the_cpu() {
    if cuda_or_skip("sampled_tokens_on_the_gpu_follow_the_cpu").is_none() {
        return;
    }
    let cpu = Model::load(&fixture("qwen2")).unwrap();
    let gpu = on_gpu(&cpu, DType::F32);
    let p: Vec<Vec<u32>> = (0..32u32).map(|i| vec![i % 7 + 1, i + 3, 2 * i + 5]).collect();
    for sampler in [
        Sampler { temperature: 1.1, top_k: 0, top_p: 1.0 },
        Sampler { temperature: 0.8, top_k: 20, top_p: 1.0 },
        Sampler { temperature: 1.0, top_k: 0, top_p: 0.9 },
    ] {
        let cfg = GenerateConfig::new(12, sampler, 17, vec![]);
        let (want, got) = (generate(&cpu, &p, &cfg).unwrap(), generate(&gpu, &p, &cfg).unwrap());
        let differ = want.iter().zip(&got).filter(|(a, b)| a.ids != b.ids).count();
        assert!(differ <= 1, "{sampler:?}: {differ} of 32 sequences differ from the CPU's");
        let same: Vec<usize> = (0..32).filter(|&i| want[i].ids == got[i].ids).collect();
        let pick = |v: &[Completion]| same.iter().map(|&i| v[i].clone()).collect::<Vec<_>>();
        assert_same(&pick(&got), &pick(&want), 1e-4, &format!("{sampler:?}"));
    }
}

/// One new token from 4000 copies of a prompt on the GPU: frequencies against the exact filtered
/// softmax of the CPU's logits; a temperature 50% off must be rejected by the same test.
#[test]
fn gpu_draws_match_the_restricted_softmax() {
    if cuda_or_skip("gpu_draws_match_the_restricted_softmax").is_none() {
        return;
    }
    let cpu = Model::load(&fixture("gpt2")).unwrap();
    let gpu = on_gpu(&cpu, DType::F32);
    let prompt = vec![0u32, 40, 41, 42];
    let mut cache = cpu.new_cache(1, prompt.len()).unwrap();
    let logits = cpu.next_token_logits(&mut cache, &[(0, &prompt)]).unwrap().to_vec_f32().unwrap();
    for (t, k, p) in [(1.2, 0, 1.0), (0.9, 30, 1.0), (1.0, 0, 0.8), (1.2, 30, 0.95)] {
        let cfg = GenerateConfig::new(1, Sampler { temperature: t, top_k: k, top_p: p }, 5, vec![]);
        let out = generate(&gpu, &vec![prompt.clone(); 4000], &cfg).unwrap();
        let mut counts = vec![0usize; logits.len()];
        out.iter().for_each(|c| counts[c.ids[0] as usize] += 1);
        let (stat, df, impossible) = chi_square(&counts, &expected(&logits, t, k, p));
        assert!(!impossible && stat < critical(df), "T={t} k={k} p={p}: chi2 {stat:.1} on {df} df");
        let (wrong, wdf, _) = chi_square(&counts, &expected(&logits, t * 1.5, k, p));
        assert!(wrong > critical(wdf), "T={t}: a wrong temperature is not rejected (chi2 {wrong:.1})");
    }
}

/// Batch sizes 1, 3 and 8 (continuous batching: a stop token frees slots at different steps),
/// CUDA graphs on and off, a look at the state after every step or every 8, the prompts in another
/// order (the prompts are distinct): the same tokens.
/// With one batch size, graphs on and off run the same kernels: bit-identical results.
#[test]
fn batch_size_graphs_and_refills_do_not_change_gpu_samples() {
    if cuda_or_skip("batch_size_graphs_and_refills_do_not_change_gpu_samples").is_none() {
        return;
    }
    let gpu = on_gpu(&Model::load(&fixture("llama")).unwrap(), DType::F32);
    let p: Vec<Vec<u32>> = (0..8u32).map(|i| (0..=i % 4).map(|j| 3 * i + j + 1).collect()).collect();
    let base = GenerateConfig::new(10, Sampler { temperature: 1.2, top_k: 0, top_p: 1.0 }, 8, vec![]);
    let probe = generate(&gpu, &p, &base).unwrap();
    let cfg = GenerateConfig { stop_tokens: vec![probe[0].ids[2]], ..base };
    let all = generate(&gpu, &p, &cfg).unwrap();
    assert!(all.iter().any(|c| c.stopped), "the stop token ends some sequence");
    for (batch_size, graphs, sync_every) in
        [(1, true, 8), (3, true, 8), (3, false, 1), (8, false, 8), (8, true, 1)]
    {
        let c = GenerateConfig { batch_size, cuda_graphs: graphs, sync_every, ..cfg.clone() };
        let got = generate(&gpu, &p, &c).unwrap();
        assert_same(&got, &all, 1e-4, &format!("batch {batch_size} graphs {graphs} sync every {sync_every}"));
    }
    // Another order of the prompts: each prompt gets its own samples back.
    let order = [5, 2, 7, 0, 4, 1, 6, 3];
    let shuffled: Vec<Vec<u32>> = order.iter().map(|&i| p[i].clone()).collect();
    let out = generate(&gpu, &shuffled, &GenerateConfig { batch_size: 3, ..cfg.clone() }).unwrap();
    let mut back = all.clone();
    for (j, &i) in order.iter().enumerate() {
        back[i] = out[j].clone();
    }
    assert_same(&back, &all, 1e-4, "shuffled prompts");
    let on = generate(&gpu, &p, &GenerateConfig { batch_size: 3, ..cfg.clone() }).unwrap();
    let off =
        generate(&gpu, &p, &GenerateConfig { batch_size: 3, cuda_graphs: false, ..cfg.clone() }).unwrap();
    assert_eq!(on, off, "graphs on and off");
    // A stopped sequence ends with the stop token, and nothing follows it.
    for c in &all {
        assert_eq!(c.stopped, c.ids.last() == cfg.stop_tokens.first());
        assert!(c.stopped || c.ids.len() == 10);
    }
}

/// The log-probabilities beside the sampled tokens are `gkd score`'s of the same sequences, on
/// the same GPU: in f32 to 1e-4; in bf16 within 0.1 (the decode step's logits and the score's are
/// both rounded to bf16, 2⁻⁹ relative of logits up to ~10, plus different summation orders over
/// the layers).
#[test]
fn gpu_logprobs_equal_scored_logprobs() {
    if cuda_or_skip("gpu_logprobs_equal_scored_logprobs").is_none() {
        return;
    }
    let cpu = Model::load(&fixture("mistral")).unwrap();
    for (dtype, tol) in [(DType::F32, 1e-4), (DType::BF16, 0.1)] {
        let gpu = on_gpu(&cpu, dtype);
        let p = prompts("mistral");
        let cfg = GenerateConfig {
            batch_size: 2,
            ..GenerateConfig::new(10, Sampler { temperature: 1.3, top_k: 40, top_p: 0.95 }, 11, vec![])
        };
        let out = generate(&gpu, &p, &cfg).unwrap();
        for (prompt, c) in p.iter().zip(&out) {
            let full: Vec<u32> = prompt.iter().chain(&c.ids).copied().collect();
            let scored = gpu.logprobs(&[full]).unwrap().remove(0);
            for (i, lp) in c.logprobs.iter().enumerate() {
                let want = scored[prompt.len() - 1 + i];
                assert!((lp - want).abs() <= tol, "{dtype}: token {i}: {lp} vs {want}");
            }
        }
    }
}
