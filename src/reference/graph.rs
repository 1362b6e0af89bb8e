//! A plain interpreter of a [`Graph`] on the CPU: one training step (forward with batch
//! statistics, backward, running-statistics update) or one inference pass, built from the
//! per-op references. It keeps every value and zero-initialises every gradient, so it shares
//! none of the schedule compiler's logic (recomputation, in-place accumulation, planning) and
//! can judge it.

use crate::graph::{Graph, Op, SliceId, StorageId};
use crate::graph::{BN_EPS, BN_MOMENTUM};
use crate::ops::batchnorm::BatchNormShape;
use crate::ops::conv::Conv2dShape;
use crate::ops::linear::LinearShape;
use crate::ops::pool::PoolShape;
use crate::reference::{batchnorm as bn, conv, elementwise as ew, linear, loss, pool};

/// What a reference step produces, in the graph's layouts (activations channel-major).
#[derive(Clone, Debug)]
pub struct ReferenceStep {
    pub loss: f32,
    pub correct: f32,
    /// Class-major (K, N), as the graph stores them.
    pub logits: Vec<f32>,
    /// One vector per parameter group, in the group's layout.
    pub param_grads: Vec<Vec<f32>>,
    /// One vector per state group after the step.
    pub states: Vec<Vec<f32>>,
}

struct Values<'g> {
    graph: &'g Graph,
    data: Vec<Vec<f32>>,
}

impl Values<'_> {
    fn new(graph: &Graph) -> Values<'_> {
        Values { graph, data: graph.storages.iter().map(|s| vec![0.0; s.elems() as usize]).collect() }
    }
    fn range(&self, t: SliceId) -> (StorageId, std::ops::Range<usize>) {
        let tensor = self.graph.slice(t);
        let ce = self.graph.storages[tensor.storage.0].channel_elems() as usize;
        (tensor.storage, tensor.c0 as usize * ce..(tensor.c0 + tensor.c) as usize * ce)
    }
    fn get(&self, t: SliceId) -> &[f32] {
        let (s, r) = self.range(t);
        &self.data[s.0][r]
    }
    fn set(&mut self, t: SliceId, v: &[f32]) {
        let (s, r) = self.range(t);
        self.data[s.0][r].copy_from_slice(v);
    }
    fn add(&mut self, t: SliceId, v: &[f32]) {
        let (s, r) = self.range(t);
        self.data[s.0][r].iter_mut().zip(v).for_each(|(a, b)| *a += b);
    }
}

/// Runs the graph. `train` selects batch statistics, dropout and backward; `step` keys the
/// dropout masks exactly as the executor does. `input` is channel-major (C, N, H, W).
pub fn run(
    graph: &Graph,
    params: &[Vec<f32>],
    states: &[Vec<f32>],
    input: &[f32],
    labels: &[f32],
    train: bool,
    step: u64,
) -> ReferenceStep {
    let g = graph;
    let mut v = Values::new(g);
    let mut states: Vec<Vec<f32>> = states.to_vec();
    let mut stats: Vec<Option<Vec<f32>>> = vec![None; g.nodes.len()];
    v.set(g.input.unwrap(), input);
    if let Some(l) = g.labels {
        v.set(l, labels);
    }
    let (mut loss_value, mut correct, mut dlogits) = (f32::NAN, 0.0, None);
    for (i, node) in g.nodes.iter().enumerate() {
        let x = node.inputs[0];
        let [c, n, h, w] = g.shape(x);
        let y = match node.op {
            Op::Conv2d { weight, .. } => {
                conv::conv2d_forward(&Conv2dShape::of_node(g, node), v.get(x), &params[weight.0])
            }
            Op::BatchNorm { affine, running, relu, .. } => {
                let m = (n * h * w) as usize;
                let s = if train {
                    let (s, r) = bn::train_stats(c as usize, m, v.get(x), &states[running.0], BN_MOMENTUM, BN_EPS);
                    states[running.0] = r;
                    s
                } else {
                    bn::eval_stats(c as usize, &states[running.0], BN_EPS)
                };
                let y = bn::apply(c as usize, m, v.get(x), &s, &params[affine.0], relu);
                stats[i] = Some(s);
                y
            }
            Op::Relu => ew::relu_forward(v.get(x)),
            Op::Dropout { rate, key } if train && rate > 0.0 => ew::dropout_forward(v.get(x), rate, [key, step as u32]),
            Op::Dropout { .. } | Op::Copy => v.get(x).to_vec(),
            Op::AvgPool2x2 => pool::avg_pool_forward(PoolShape::of_input(g, x), v.get(x)),
            Op::MaxPool3x3s2p1 => pool::max_pool_forward(PoolShape::of_input(g, x), v.get(x)),
            Op::GlobalAvgPool => pool::global_avg_pool_forward(PoolShape::of_input(g, x), v.get(x)),
            Op::Linear { params: p } => {
                let s = LinearShape::of_node(g, node);
                let (wt, b) = params[p.0].split_at((s.out_features * s.in_features) as usize);
                linear::forward(s, v.get(x), wt, b)
            }
            Op::SoftmaxCrossEntropy => {
                let r = loss::cross_entropy(c as usize, n as usize, v.get(x), v.get(node.inputs[1]));
                loss_value = r.loss;
                correct = r.correct;
                dlogits = Some(r.dlogits);
                vec![r.loss, r.correct]
            }
        };
        v.set(node.output, &y);
    }
    let logits = v.get(g.logits.unwrap()).to_vec();
    let mut param_grads: Vec<Vec<f32>> = g.params.iter().map(|p| vec![0.0; p.len()]).collect();
    if train {
        let mut d = Values::new(g);
        d.data.iter_mut().for_each(|s| s.fill(0.0));
        if let Some(dl) = &dlogits {
            d.set(g.logits.unwrap(), dl);
        }
        for (i, node) in g.nodes.iter().enumerate().rev() {
            let x = node.inputs[0];
            let c = g.shape(x)[0];
            let dy = d.get(node.output).to_vec();
            let dx = match node.op {
                Op::SoftmaxCrossEntropy => continue,
                Op::Conv2d { weight, .. } => {
                    let s = Conv2dShape::of_node(g, node);
                    let dw = conv::conv2d_backward_weight(&s, v.get(x), &dy);
                    param_grads[weight.0].iter_mut().zip(&dw).for_each(|(a, b)| *a += b);
                    conv::conv2d_backward_input(&s, &dy, &params[weight.0])
                }
                Op::BatchNorm { affine, relu, .. } => {
                    let s = BatchNormShape::of_input(g, x);
                    let (cu, m) = (c as usize, s.m() as usize);
                    let st = stats[i].as_ref().unwrap();
                    let ga = bn::backward_affine(cu, m, v.get(x), &dy, st, &params[affine.0], relu);
                    param_grads[affine.0].iter_mut().zip(&ga).for_each(|(a, b)| *a += b);
                    bn::backward_input(cu, m, v.get(x), &dy, st, &params[affine.0], relu)
                }
                Op::Relu => ew::relu_backward(v.get(x), &dy),
                Op::Dropout { rate, key } if rate > 0.0 => ew::dropout_backward(&dy, rate, [key, step as u32]),
                Op::Dropout { .. } | Op::Copy => dy.clone(),
                Op::AvgPool2x2 => pool::avg_pool_backward(PoolShape::of_input(g, x), &dy),
                Op::MaxPool3x3s2p1 => pool::max_pool_backward(PoolShape::of_input(g, x), v.get(x), &dy),
                Op::GlobalAvgPool => pool::global_avg_pool_backward(PoolShape::of_input(g, x), &dy),
                Op::Linear { params: p } => {
                    let s = LinearShape::of_node(g, node);
                    let split = (s.out_features * s.in_features) as usize;
                    let dw = linear::backward_weight(s, v.get(x), &dy);
                    let db = linear::backward_bias(s, &dy);
                    let grads = &mut param_grads[p.0];
                    grads[..split].iter_mut().zip(&dw).for_each(|(a, b)| *a += b);
                    grads[split..].iter_mut().zip(&db).for_each(|(a, b)| *a += b);
                    linear::backward_input(s, &params[p.0][..split], &dy)
                }
            };
            d.add(x, &dx);
        }
    }
    ReferenceStep { loss: loss_value, correct, logits, param_grads, states }
}
