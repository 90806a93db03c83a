// Open a file with Netron's own model readers (the JavaScript the `netron` package ships) and print the
// graph they build as JSON: node tests/netron_open.mjs NETRON_DIR FILE  (tests/test_netron.py runs it)
import * as fs from 'fs/promises';
import * as path from 'path';
import * as url from 'url';

const [dir, file] = process.argv.slice(2);
const load = (name) => import(url.pathToFileURL(path.join(dir, name)).href);
const base = await load('base.js');
const view = await load('view.js');
const context = {
    identifier: path.basename(file),
    stream: new base.BinaryStream(new Uint8Array(await fs.readFile(file))),
    async asset(name) { return fs.readFile(path.join(dir, name), 'utf-8'); },
    async fetch(name) { throw new Error(`File not found: ${name}`); },
    async require(id) { return load(`${id}.js`); },
    error(error) { throw error; },
    exception(error) { throw error; },
    environment() { return null; },
    entries: null,
    type: 'Test'
};
const service = new view.ModelFactoryService(context);
const model = await service.open(context);
const tensor = (value) => value && value.type ? { dataType: value.type.dataType, shape: value.type.shape ? value.type.shape.dimensions : null } : null;
const out = {
    format: model.format,
    graphs: model.modules.map((g) => ({
        inputs: g.inputs.map((a) => ({ name: a.name, values: a.value.map((v) => v.name) })),
        outputs: g.outputs.map((a) => ({ name: a.name, values: a.value.map((v) => v.name) })),
        nodes: g.nodes.map((n) => ({
            name: n.name, type: n.type && n.type.name,
            inputs: n.inputs.map((a) => ({ name: a.name, values: a.value.map((v) => ({ name: v.name, initializer: tensor(v.initializer) })) })),
            outputs: n.outputs.map((a) => ({ name: a.name, values: a.value.map((v) => v.name) }))
        }))
    }))
};
process.stdout.write(JSON.stringify(out, null, 1));
