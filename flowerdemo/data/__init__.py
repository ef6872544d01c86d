"""Photos in: image decoding, archives, dataset scan and split, the flowers download, the decoded
tensor cache and batched augmentation."""
