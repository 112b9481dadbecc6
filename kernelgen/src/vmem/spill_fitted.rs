//! Fitted spill models, written by `kernelgen calibrate --write` from the committed oracle data.
//! Do not edit by hand: `spill_constants_match_a_refit_of_the_data` keeps them equal to a refit.

use super::spill::{Kernel, SpillModel};

pub const FITTED: &[(Kernel, &str, SpillModel)] = &[
    (
        Kernel::JaxRpa,
        "v4",
        SpillModel {
            coef: [
                5.304554577018097e0,
                9.581844064043743e-1,
                3.5085369601814076e-1,
                6.962099021181793e-1,
                -4.935033903026691e-3,
                7.965067129276751e-2,
                5.337418797917056e-2,
            ],
            under: 1.2438697824188868e-1,
            over: 1.2178807255271747e-1,
            abs_err: 6.5536e4,
            points: 35,
            max_rows: 512,
            max_keys: 4096,
        },
    ),
    (
        Kernel::JaxRpa,
        "v5e",
        SpillModel {
            coef: [
                4.996921387664499e0,
                8.282516292917065e-1,
                7.001496822317946e-1,
                7.238854335393994e-1,
                -1.0160653912333466e0,
                4.31807703502003e-4,
                1.3140532926221422e-2,
            ],
            under: 2.0323471810924787e-1,
            over: 1.4406855174107658e-1,
            abs_err: 6.5536e4,
            points: 48,
            max_rows: 1024,
            max_keys: 8192,
        },
    ),
    (
        Kernel::JaxRpa,
        "v5p",
        SpillModel {
            coef: [
                3.9949134539067956e0,
                8.489599581109706e-1,
                8.78018399678756e-1,
                8.681710628929186e-1,
                -1.0849451897393911e0,
                -1.5355963717530696e-1,
                -1.1670315108426825e-2,
            ],
            under: 2.4508332837228936e-1,
            over: 1.9113878658593317e-1,
            abs_err: 6.5536e4,
            points: 50,
            max_rows: 1024,
            max_keys: 16384,
        },
    ),
    (
        Kernel::JaxRpa,
        "v6e",
        SpillModel {
            coef: [
                1.947528494974799e0,
                7.114137131250717e-1,
                1.219553583838381e0,
                1.2058330590933117e0,
                -1.9155850348846173e-2,
                7.07479189115796e-2,
                -6.686635393587752e-2,
            ],
            under: 1.3773586921030917e-1,
            over: 7.024811070682128e-2,
            abs_err: 6.5536e4,
            points: 48,
            max_rows: 1024,
            max_keys: 16384,
        },
    ),
    (
        Kernel::JaxRpa,
        "v7x",
        SpillModel {
            coef: [
                2.4422408243191938e0,
                1.012137824939362e0,
                4.0118386082605983e-1,
                1.0477977559059382e0,
                1.359969238653921e-2,
                5.633439868394724e-1,
                5.223501839986188e-2,
            ],
            under: 4.7275122593561264e-1,
            over: 2.6888016129553777e-1,
            abs_err: 6.5536e4,
            points: 48,
            max_rows: 1024,
            max_keys: 8192,
        },
    ),
];
