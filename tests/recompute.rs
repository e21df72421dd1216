//! Activation recomputation (`--recompute attention|layers`) changes what the forward keeps, not
//! what it computes: one SFT micro-batch's loss and every parameter's gradient equal those without
//! it, on every fixture family (on the CPU bit for bit: the recomputed forward runs the same
//! deterministic kernels on the same inputs).

mod model_common;

use gkd::distill::trainer::micro_batch_grads;
use gkd::model::{Model, Recompute};
use gkd::{DType, Device, Tensor};
use model_common::{fixture, reference, FAMILIES};

fn loss_and_grads(model: &Model, pairs: &[(Vec<u32>, Vec<u32>)]) -> (f64, Vec<f32>) {
    let mut grads = Tensor::zeros([model.num_params()], DType::F32, Device::Cpu).unwrap();
    let tokens: usize = pairs.iter().map(|(_, c)| c.len()).sum();
    let loss =
        micro_batch_grads(model, None, model.config.vocab_size, pairs, 1.0 / tokens as f64, &mut grads)
            .unwrap();
    (loss, grads.to_vec_f32().unwrap())
}

#[test]
fn recomputation_gives_the_same_loss_and_gradients() {
    for family in FAMILIES {
        let mut model = Model::load(&fixture(family)).unwrap();
        let pairs: Vec<(Vec<u32>, Vec<u32>)> = reference(family)
            .sequences
            .iter()
            .filter(|s| s.len() >= 2)
            .map(|s| (s[..1].to_vec(), s[1..].to_vec()))
            .collect();
        let (loss, grads) = loss_and_grads(&model, &pairs);
        assert!(
            grads.iter().filter(|g| g.abs() > 1e-6).count() > grads.len() / 2,
            "{family}: degenerate gradients"
        );
        for mode in [Recompute::Attention, Recompute::Layers] {
            model.set_recompute(mode);
            let (l, g) = loss_and_grads(&model, &pairs);
            assert_eq!(l.to_bits(), loss.to_bits(), "{family} {mode:?}: loss {l} vs {loss}");
            for e in model.params().entries() {
                assert_eq!(&g[e.range()], &grads[e.range()], "{family} {mode:?}: d {}", e.name);
            }
        }
        model.set_recompute(Recompute::None);
    }
}

#[test]
fn recompute_names_parse() {
    assert_eq!("layers".parse::<Recompute>().unwrap(), Recompute::Layers);
    assert_eq!("attention".parse::<Recompute>().unwrap(), Recompute::Attention);
    assert_eq!("none".parse::<Recompute>().unwrap(), Recompute::None);
    let e = "all".parse::<Recompute>().unwrap_err().to_string();
    assert!(e.contains("none, attention or layers"), "{e}");
}
