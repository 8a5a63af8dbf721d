//! `#[derive(ParamDocs)]`: the parameter docs of a stage kind (name, Rust
//! type, doc comment per field) from the struct it deserializes, for
//! `mrbm params KIND`. A field's `#[serde(rename = "...")]` names it; a
//! `#[serde(flatten)]` field is no parameter itself, the fields of its
//! type (which derives `ParamDocs` too) are, in place.

use proc_macro::TokenStream;
use quote::quote;
use syn::{parse_macro_input, Data, DeriveInput, Fields, LitStr};

#[proc_macro_derive(ParamDocs)]
pub fn derive_param_docs(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    let name = &input.ident;
    let (impl_g, ty_g, where_g) = input.generics.split_for_impl();
    let fields = match &input.data {
        Data::Struct(s) => match &s.fields {
            Fields::Named(f) => f.named.iter().collect::<Vec<_>>(),
            Fields::Unit => Vec::new(),
            Fields::Unnamed(_) => {
                return syn::Error::new_spanned(name, "ParamDocs needs named fields")
                    .to_compile_error()
                    .into()
            }
        },
        _ => {
            return syn::Error::new_spanned(name, "ParamDocs is for structs")
                .to_compile_error()
                .into()
        }
    };
    let mut pushes = Vec::new();
    for f in fields {
        let mut doc: Vec<String> = Vec::new();
        let mut rename: Option<String> = None;
        let mut flatten = false;
        for attr in &f.attrs {
            if attr.path().is_ident("doc") {
                if let syn::Meta::NameValue(nv) = &attr.meta {
                    if let syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(s),
                        ..
                    }) = &nv.value
                    {
                        doc.push(s.value().trim().to_string());
                    }
                }
            } else if attr.path().is_ident("serde") {
                let _ = attr.parse_nested_meta(|m| {
                    if m.path.is_ident("flatten") {
                        flatten = true;
                    } else if m.path.is_ident("rename") {
                        let s: LitStr = m.value()?.parse()?;
                        rename = Some(s.value());
                    } else if let Ok(v) = m.value() {
                        // Other `key = value` settings: read past the value.
                        let _: syn::Expr = v.parse()?;
                    }
                    Ok(())
                });
            }
        }
        let ty = &f.ty;
        if flatten {
            pushes.push(quote! {
                docs.extend(<#ty as ::mrbm_stage::ParamDocs>::param_docs());
            });
            continue;
        }
        let field = rename.unwrap_or_else(|| {
            f.ident
                .as_ref()
                .map(|i| i.to_string().trim_start_matches("r#").to_string())
                .unwrap_or_default()
        });
        let ty_text = type_text(&quote!(#ty).to_string());
        let doc = doc.join(" ");
        pushes.push(quote! {
            docs.push(::mrbm_stage::ParamDoc { name: #field, ty: #ty_text, doc: #doc });
        });
    }
    quote! {
        impl #impl_g ::mrbm_stage::ParamDocs for #name #ty_g #where_g {
            fn param_docs() -> ::std::vec::Vec<::mrbm_stage::ParamDoc> {
                #[allow(unused_mut)]
                let mut docs = ::std::vec::Vec::new();
                #(#pushes)*
                docs
            }
        }
    }
    .into()
}

/// A type as rustfmt writes it (`Option<Vec<String>>`), from the token
/// text (`Option < Vec < String > >`).
fn type_text(tokens: &str) -> String {
    let mut s = tokens.to_string();
    for (from, to) in [
        (" <", "<"),
        ("< ", "<"),
        (" >", ">"),
        (" ,", ","),
        (" ;", ";"),
        (" :: ", "::"),
        (":: ", "::"),
        ("( ", "("),
        (" )", ")"),
        ("[ ", "["),
        (" ]", "]"),
        ("& ", "&"),
    ] {
        while s.contains(from) {
            s = s.replace(from, to);
        }
    }
    s
}
