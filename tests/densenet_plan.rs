//! Model definitions and memory plans, checked without a GPU.

use densegpu::densenet::{DenseNetConfig, MemoryMode};
use densegpu::executor::memory_report;
use densegpu::Mode;

#[test]
fn parameter_counts_equal_torchvision() {
    let cases = [
        (DenseNetConfig::cifar_bc(100, 12, 10).unwrap(), 769_162),
        (DenseNetConfig::cifar_bc(40, 12, 10).unwrap(), 176_122),
        (DenseNetConfig::cifar_bc(190, 12, 10).unwrap(), 2_365_222),
        (DenseNetConfig::densenet121(1000), 7_978_856),
        (DenseNetConfig::densenet169(1000), 14_149_480),
        (DenseNetConfig::densenet201(1000), 20_013_928),
        (DenseNetConfig::densenet161(1000), 28_681_000),
    ];
    for (config, expected) in cases {
        for mode in MemoryMode::ALL {
            let g = config.build(1, mode).unwrap();
            assert_eq!(g.parameter_count(), expected, "{config:?} in {mode}");
        }
    }
}

#[test]
fn print_bc100_plan() {
    let config = DenseNetConfig::cifar_bc(100, 12, 10).unwrap();
    for mode in MemoryMode::ALL {
        let g = config.build(64, mode).unwrap();
        let r = memory_report(&g, Mode::Train).unwrap();
        println!("{mode}\n{r}");
    }
}
