reidkit train --plugin parts.py --config parts.yaml model.options.width=24 loss.feat_norm.scale=0.001
reidkit usl --plugin parts.py --config parts.yaml usl.method=centroid_ce usl.centroid_ce.temperature=0.1 output_dir=runs/parts_usl
reidkit export --plugin parts.py --weights runs/parts/model.pt --format onnx --out parts.onnx
reidkit extract --plugin parts.py --weights runs/parts/model.pt --images data/campus/Market-1501-v15.09.15/query --out query.npz
reidkit test --plugin parts.py --config parts.yaml --weights runs/parts/model.pt
reidkit extract --weights runs/parts/model.pt --images data/campus/Market-1501-v15.09.15/query --out query.npz
# error: checkpoint runs/parts/model.pt needs the backbone 'tiny_cnn', which is not registered; it was written with the plug-in(s) $PWD/parts.py, which are not loaded: loading a checkpoint never imports code, so pass each with --plugin (or REIDKIT_PLUGINS) if you trust it
reidkit train --plugin parts.py --config parts.yaml model.options.widht=24
# error: unknown config key 'model.options.widht' (did you mean 'width'?); valid keys in 'model.options': width
