use crate::common::*;
use densegpu::{ops::elementwise, reference};

#[test]
fn relu_forward_and_backward_match_reference() {
    for &len in &[1usize, 7 * 5 * 3, 13 * 5 * 7 * 5, 70_001] {
        let x = random(len, 1);
        let dy = random(len, 2);
        let mut s = Slots::new();
        let (xs, ys, dys) = (s.input(&x), s.output(len), s.input(&dy));
        let buf = s.upload();
        run(&[elementwise::relu_forward(gpu(), len as u32, s.view(&buf, xs), s.view(&buf, ys))]);
        assert_close("relu forward", &s.read(&buf, ys), &reference::elementwise::relu_forward(&x));
        run(&[elementwise::relu_backward(gpu(), len as u32, s.view(&buf, xs), s.view(&buf, dys), s.view(&buf, dys))]);
        assert_close("relu backward", &s.read(&buf, dys), &reference::elementwise::relu_backward(&x, &dy));
        s.assert_guards_intact(&buf);
    }
}
