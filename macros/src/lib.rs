//! `#[leakwatch::test]`: an `async fn` test run as one unit of work, failing naming what it
//! leaves behind. Re-exported by `leakwatch` (feature `macros`), where it is documented.

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::quote;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, ItemFn, Lit, MetaNameValue, Token};

/// Runs an `async fn` test as a unit of work and fails naming what it left behind. See
/// `leakwatch::test`.
#[proc_macro_attribute]
pub fn test(args: TokenStream, item: TokenStream) -> TokenStream {
    match expand(args.into(), item.into()) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

/// What the attribute's arguments say.
#[derive(Default)]
struct Options {
    multi_thread: bool,
    worker_threads: Option<usize>,
    repeat: Option<usize>,
}

fn options(args: proc_macro2::TokenStream) -> syn::Result<Options> {
    let mut options = Options::default();
    let pairs = Punctuated::<MetaNameValue, Token![,]>::parse_terminated.parse2(args)?;
    for pair in pairs {
        let name = pair
            .path
            .get_ident()
            .map(ToString::to_string)
            .unwrap_or_default();
        match name.as_str() {
            "flavor" => match string(&pair.value)?.as_str() {
                "current_thread" => options.multi_thread = false,
                "multi_thread" => options.multi_thread = true,
                other => {
                    return Err(syn::Error::new_spanned(
                        &pair.value,
                        format!(
                            "unknown flavor `{other}`: expected `current_thread` or `multi_thread`"
                        ),
                    ))
                }
            },
            "worker_threads" => options.worker_threads = Some(number(&pair.value)?),
            "repeat" => options.repeat = Some(number(&pair.value)?),
            _ => {
                return Err(syn::Error::new_spanned(
                    &pair.path,
                    "unknown argument: expected `flavor`, `worker_threads` or `repeat`",
                ))
            }
        }
    }
    if options.worker_threads.is_some() && !options.multi_thread {
        return Err(syn::Error::new(
            Span::call_site(),
            "`worker_threads` needs `flavor = \"multi_thread\"`",
        ));
    }
    Ok(options)
}

fn literal(value: &Expr) -> Option<&Lit> {
    match value {
        Expr::Lit(ExprLit { lit, .. }) => Some(lit),
        _ => None,
    }
}

fn string(value: &Expr) -> syn::Result<String> {
    match literal(value) {
        Some(Lit::Str(s)) => Ok(s.value()),
        _ => Err(syn::Error::new_spanned(value, "expected a string")),
    }
}

fn number(value: &Expr) -> syn::Result<usize> {
    match literal(value) {
        Some(Lit::Int(n)) => n.base10_parse(),
        _ => Err(syn::Error::new_spanned(value, "expected an integer")),
    }
}

fn expand(
    args: proc_macro2::TokenStream,
    item: proc_macro2::TokenStream,
) -> syn::Result<proc_macro2::TokenStream> {
    let options = options(args)?;
    let function: ItemFn = syn::parse2(item)?;
    let signature = &function.sig;
    if signature.asyncness.is_none() {
        return Err(syn::Error::new_spanned(
            signature.fn_token,
            "#[leakwatch::test] needs an `async fn`",
        ));
    }
    if !signature.inputs.is_empty() {
        return Err(syn::Error::new_spanned(
            &signature.inputs,
            "#[leakwatch::test] takes a function without arguments",
        ));
    }
    let attributes = &function.attrs;
    let visibility = &function.vis;
    let name = &signature.ident;
    let output = &signature.output;
    let body = &function.block;
    let workers = match (options.multi_thread, options.worker_threads) {
        (false, _) => quote!(::core::option::Option::None),
        (true, None) => quote!(::core::option::Option::Some(0)),
        (true, Some(n)) => quote!(::core::option::Option::Some(#n)),
    };
    let run = quote! {
        ::leakwatch::unit::TestRun {
            name: ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#name)),
            workers: #workers,
        }
    };
    let call = match options.repeat {
        None => quote!(::leakwatch::unit::run_test(#run, async move #body)),
        Some(calls) => {
            if !matches!(output, syn::ReturnType::Default) {
                return Err(syn::Error::new_spanned(
                    output,
                    "#[leakwatch::test(repeat = ..)] runs the body many times: it returns `()`",
                ));
            }
            quote!(::leakwatch::unit::run_test_repeated(#run, #calls, || async move #body))
        }
    };
    Ok(quote! {
        #(#attributes)*
        #[::core::prelude::v1::test]
        #visibility fn #name() #output {
            #call
        }
    })
}

#[cfg(test)]
mod tests {
    use super::expand;
    use quote::quote;

    fn error(args: proc_macro2::TokenStream, item: proc_macro2::TokenStream) -> String {
        expand(args, item).unwrap_err().to_string()
    }

    #[test]
    fn a_test_runs_its_body_once_on_a_current_thread_runtime() {
        let out = expand(
            quote!(),
            quote!(
                async fn t() {
                    f().await;
                }
            ),
        )
        .unwrap()
        .to_string();
        assert!(out.contains(":: leakwatch :: unit :: run_test"), "{out}");
        assert!(
            out.contains("workers : :: core :: option :: Option :: None"),
            "{out}"
        );
        assert!(
            out.contains("# [:: core :: prelude :: v1 :: test]"),
            "{out}"
        );
        assert!(out.contains("fn t ()"), "{out}");
    }

    #[test]
    fn its_arguments_choose_the_runtime_and_the_repetitions() {
        let args = quote!(flavor = "multi_thread", worker_threads = 3, repeat = 64);
        let item = quote!(
            #[should_panic]
            async fn t() {}
        );
        let out = expand(args, item).unwrap().to_string();
        assert!(out.contains("run_test_repeated"), "{out}");
        assert!(out.contains("Some (3usize)"), "{out}");
        assert!(out.contains(", 64usize ,"), "{out}");
        assert!(
            out.contains("# [should_panic]"),
            "other attributes stay: {out}"
        );
        let out = expand(
            quote!(flavor = "multi_thread"),
            quote!(
                async fn t() {}
            ),
        )
        .unwrap();
        assert!(out.to_string().contains("Some (0)"), "{out}");
    }

    #[test]
    fn what_it_cannot_run_is_a_compile_error_that_says_why() {
        let plain = error(
            quote!(),
            quote!(
                fn t() {}
            ),
        );
        assert!(plain.contains("needs an `async fn`"), "{plain}");
        let with_args = error(
            quote!(),
            quote!(
                async fn t(x: u8) {}
            ),
        );
        assert!(with_args.contains("without arguments"), "{with_args}");
        let flavor = error(
            quote!(flavor = "single"),
            quote!(
                async fn t() {}
            ),
        );
        assert!(flavor.contains("unknown flavor `single`"), "{flavor}");
        let workers = error(
            quote!(worker_threads = 2),
            quote!(
                async fn t() {}
            ),
        );
        assert!(
            workers.contains("needs `flavor = \"multi_thread\"`"),
            "{workers}"
        );
        let unknown = error(
            quote!(threads = 2),
            quote!(
                async fn t() {}
            ),
        );
        assert!(unknown.contains("unknown argument"), "{unknown}");
        let not_a_number = error(
            quote!(repeat = "many"),
            quote!(
                async fn t() {}
            ),
        );
        assert!(
            not_a_number.contains("expected an integer"),
            "{not_a_number}"
        );
        let returns = error(
            quote!(repeat = 16),
            quote!(
                async fn t() -> u8 {
                    1
                }
            ),
        );
        assert!(returns.contains("returns `()`"), "{returns}");
    }
}
