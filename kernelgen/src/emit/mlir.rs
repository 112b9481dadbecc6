//! melior (MLIR 22) front end for emitted text: parse, verify, shape-check, print generic form.
//!
//! StableHLO is not registered in melior's context (it cannot parse StableHLO's pretty form), so
//! templates are written in MLIR's generic op form and the module is printed back in that form,
//! which XLA accepts.

use super::typecheck::{check_op, OpView, RegionView, TensorType};
use super::EmitError;
use melior::dialect::DialectHandle;
use melior::ir::block::BlockLike;
use melior::ir::operation::{
    OperationLike, OperationPrintingFlags, OperationRef, WalkOrder, WalkResult,
};
use melior::ir::{Module, RegionLike, ValueLike};
use melior::{dialect::DialectRegistry, Context};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

/// A module that parsed, verified and passed the shape checker.
#[derive(Clone, Debug)]
pub struct CheckedModule {
    /// The module in MLIR's generic op form.
    pub generic_text: String,
    /// Op name -> count, for reports and tests.
    pub op_counts: BTreeMap<String, usize>,
}

/// A context that knows `func` and accepts unregistered dialects (StableHLO).
pub fn context() -> Context {
    let registry = DialectRegistry::new();
    DialectHandle::func().insert_dialect(&registry);
    let context = Context::new();
    context.append_dialect_registry(&registry);
    context.load_all_available_dialects();
    context.set_allow_unregistered_dialects(true);
    context
}

/// Parses `text` with diagnostics captured, so errors carry MLIR's line:col messages.
pub fn parse<'c>(context: &'c Context, text: &str) -> Result<Module<'c>, EmitError> {
    let diags = Rc::new(RefCell::new(Vec::<String>::new()));
    let sink = diags.clone();
    let id = context.attach_diagnostic_handler(move |d| {
        sink.borrow_mut().push(format!("{}: {}", d.location(), d));
        true
    });
    let module = Module::parse(context, text);
    let verified = module.as_ref().map(|m| m.as_operation().verify());
    context.detach_diagnostic_handler(id);
    let diags = diags.borrow().join("\n");
    match (module, verified) {
        (None, _) => Err(EmitError::Parse(diags)),
        (Some(_), Some(false)) => Err(EmitError::Verify(diags)),
        (Some(m), _) => Ok(m),
    }
}

fn types(
    values: impl Iterator<Item = String>,
    op: &str,
    location: &str,
) -> Result<Vec<TensorType>, EmitError> {
    values
        .map(|s| {
            TensorType::parse(&s).ok_or_else(|| EmitError::Type {
                op: op.to_string(),
                location: location.to_string(),
                message: format!("type {s} is not a ranked static tensor"),
            })
        })
        .collect()
}

fn view(op: &OperationRef, name: &str, location: &str) -> Result<OpView, EmitError> {
    let operands = types(
        op.operands().map(|v| v.r#type().to_string()),
        name,
        location,
    )?;
    let results = types(op.results().map(|v| v.r#type().to_string()), name, location)?;
    let attrs = op
        .attributes()
        .map(|(k, v)| {
            (
                k.as_string_ref().as_str().unwrap_or("").to_string(),
                v.to_string(),
            )
        })
        .collect();
    let mut regions = Vec::new();
    for region in op.regions() {
        let Some(block) = region.first_block() else {
            regions.push(RegionView::default());
            continue;
        };
        let args = (0..block.argument_count()).map(|i| {
            block
                .argument(i)
                .map(|a| a.r#type().to_string())
                .unwrap_or_default()
        });
        let args = types(args, name, location)?;
        // The last op: MLIR does not know unregistered `stablehlo.return` is a terminator.
        let mut last = block.first_operation();
        while let Some(next) = last.as_ref().and_then(|o| o.next_in_block()) {
            last = Some(next);
        }
        let yields = match last {
            Some(t) => types(t.operands().map(|v| v.r#type().to_string()), name, location)?,
            None => vec![],
        };
        regions.push(RegionView { args, yields });
    }
    Ok(OpView {
        name: name.to_string(),
        operands,
        results,
        attrs,
        regions,
    })
}

/// Runs the shape checker over every StableHLO op of `module`.
pub fn typecheck(module: &Module) -> Result<BTreeMap<String, usize>, EmitError> {
    let mut counts = BTreeMap::new();
    let mut first_error = None;
    module.as_operation().walk(WalkOrder::PreOrder, |op| {
        let name = op
            .name()
            .as_string_ref()
            .as_str()
            .unwrap_or("?")
            .to_string();
        *counts.entry(name.clone()).or_insert(0usize) += 1;
        if !name.starts_with("stablehlo.") {
            return WalkResult::Advance;
        }
        let location = op.location().to_string();
        let result = view(&op, &name, &location).and_then(|v| {
            check_op(&v).map_err(|message| EmitError::Type {
                op: name.clone(),
                location: location.clone(),
                message,
            })
        });
        match result {
            Ok(()) => WalkResult::Advance,
            Err(e) => {
                first_error = Some(e);
                WalkResult::Interrupt
            }
        }
    });
    match first_error {
        Some(e) => Err(e),
        None => Ok(counts),
    }
}

/// Prints `module` in MLIR's generic op form.
pub fn print_generic(module: &Module) -> Result<String, EmitError> {
    module
        .as_operation()
        .to_string_with_flags(OperationPrintingFlags::new().print_generic_operation_form())
        .map_err(|e| EmitError::Print(e.to_string()))
}

/// parse -> verify -> shape check -> generic print.
pub fn check(text: &str) -> Result<CheckedModule, EmitError> {
    let context = context();
    let module = parse(&context, text)?;
    let op_counts = typecheck(&module)?;
    let generic_text = print_generic(&module)?;
    Ok(CheckedModule {
        generic_text,
        op_counts,
    })
}
