//! Where each data set is published, for "missing data" errors. Nothing is
//! downloaded at run time: the user fetches the files once into the data root.

pub const MNIST: &str = " MNIST is published at https://yann.lecun.com/exdb/mnist/ and Fashion-MNIST at https://github.com/zalandoresearch/fashion-mnist (same file names); put the *-ubyte.gz (or unpacked) files in this folder";
pub const CIFAR10: &str = " CIFAR-10 (binary version, cifar-10-binary.tar.gz) is published at https://www.cs.toronto.edu/~kriz/cifar.html; unpack it so this folder holds cifar-10-batches-bin/ or the .bin files";
pub const CELEBA: &str = " CelebA is published at https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (Align&Cropped images img_align_celeba.zip, and Eval/list_eval_partition.txt for the train/valid/test split); unpack it so this folder holds img_align_celeba/";
pub const CALTECH101: &str = " Caltech-101 is published at https://data.caltech.edu/records/mzrjq-6wc02 (101_ObjectCategories); unpack it so this folder holds 101_ObjectCategories/";
pub const FOLDER: &str = " A folder data set is one sub-folder of .jpg/.jpeg/.png images per class (labels follow the sorted folder names)";
