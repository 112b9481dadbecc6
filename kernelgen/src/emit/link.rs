//! Links a kernel module into a program module with melior.
//!
//! The program declares the kernel (`func.func private @rpa_attention(...) -> ...`) and calls it;
//! the kernel module (an artifact's `rpa.stablehlo.mlir`) defines `@main`. Linking parses both in
//! one MLIR context, checks the kernel's signature against the declaration, replaces the
//! declaration with a private copy of the kernel renamed to the declared symbol, and checks the
//! result like any emitted module.

use super::mlir::{context, parse, print_generic, typecheck, CheckedModule};
use super::EmitError;
use melior::ir::attribute::StringAttribute;
use melior::ir::block::BlockLike;
use melior::ir::operation::{OperationLike, OperationMutLike, OperationRef};
use melior::ir::Module;

fn sym_name(op: &OperationRef) -> Option<String> {
    let a = op.attribute("sym_name").ok()?;
    let s = a.to_string();
    Some(s.trim_matches('"').to_string())
}

fn find_func<'c, 'm>(module: &'m Module<'c>, name: &str) -> Option<OperationRef<'c, 'm>> {
    let mut op = module.body().first_operation();
    while let Some(o) = op {
        if o.name().as_string_ref().as_str() == Ok("func.func")
            && sym_name(&o).as_deref() == Some(name)
        {
            return Some(o);
        }
        op = o.next_in_block();
    }
    None
}

fn function_type(op: &OperationRef) -> String {
    op.attribute("function_type")
        .map(|a| a.to_string())
        .unwrap_or_default()
}

/// Links `kernel_text`'s `@main` into `program_text` as `symbol`, then verifies, shape-checks
/// and prints the linked module.
pub fn link(
    program_text: &str,
    kernel_text: &str,
    symbol: &str,
) -> Result<CheckedModule, EmitError> {
    let ctx = context();
    let program = parse(&ctx, program_text)?;
    let kernel = parse(&ctx, kernel_text)?;
    let link_err = |m: String| EmitError::Link(m);
    let decl = find_func(&program, symbol)
        .ok_or_else(|| link_err(format!("the program declares no @{symbol}")))?;
    let main = find_func(&kernel, "main")
        .ok_or_else(|| link_err("the kernel module has no @main".into()))?;
    let (want, have) = (function_type(&decl), function_type(&main));
    if want != have {
        return Err(link_err(format!(
            "kernel signature {have} does not match the program's declaration of @{symbol}: {want}"
        )));
    }
    let mut copy = (*main).clone();
    copy.set_inherent_attribute("sym_name", StringAttribute::new(&ctx, symbol).into());
    copy.set_inherent_attribute(
        "sym_visibility",
        StringAttribute::new(&ctx, "private").into(),
    );
    let body = program.body();
    let decl_raw = decl.to_raw();
    body.append_operation(copy);
    // SAFETY: `decl_raw` is an operation of `program`'s body, unlinked here and destroyed once.
    unsafe {
        let mut owned = melior::ir::Operation::from_raw(decl_raw);
        owned.remove_from_parent();
        drop(owned);
    }
    if !program.as_operation().verify() {
        return Err(EmitError::Verify(format!(
            "linked module of @{symbol} does not verify"
        )));
    }
    let op_counts = typecheck(&program)?;
    let generic_text = print_generic(&program)?;
    Ok(CheckedModule {
        generic_text,
        op_counts,
    })
}
