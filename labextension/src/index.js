// nbqueue's JupyterLab side panel. It holds no panel code of its own: it imports the
// panel module the nbqueue server extension serves (nbqueue/static/panel.js), so the
// panel changes with the installed nbqueue, without a rebuild of this extension.
import { ILayoutRestorer } from '@jupyterlab/application';
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

const queueIcon = new LabIcon({
  name: 'nbqueue:queue',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 16 16">' +
    '<g class="jp-icon3" fill="#616161">' +
    '<rect x="1" y="2" width="14" height="3" rx="1"/>' +
    '<rect x="1" y="6.5" width="10" height="3" rx="1"/>' +
    '<rect x="1" y="11" width="6" height="3" rx="1"/>' +
    '</g></svg>',
});

/** The sidebar widget: loads the panel on first show, polls only while visible. */
class NbqueueSidebar extends Widget {
  constructor() {
    super();
    this.id = 'nbqueue-sidebar';
    this.addClass('jp-nbqueue-sidebar');
    this.title.icon = queueIcon;
    this.title.label = '';
    this.title.caption = 'nbqueue';
    this.node.style.overflowY = 'auto';
    this.node.style.overflowX = 'hidden';
    this._settings = ServerConnection.makeSettings();
    this._handle = null;
    this._loading = null;
    this._attempts = 0;
  }

  onAfterShow(msg) {
    super.onAfterShow(msg);
    if (this._handle) this._handle.resume();
    else this._load();
  }

  onAfterHide(msg) {
    super.onAfterHide(msg);
    if (this._handle) this._handle.pause();
  }

  dispose() {
    if (this._handle) this._handle.dispose();
    this._handle = null;
    super.dispose();
  }

  _load() {
    if (this._loading) return this._loading;
    this._loading = this._mount().finally(() => {
      this._loading = null;
    });
    return this._loading;
  }

  async _mount() {
    const settings = this._settings;
    const url = URLExt.join(settings.baseUrl, 'nbqueue/static/panel.js');
    // The browser remembers a module that failed to load: a new attempt needs a new URL.
    const attempt = this._attempts++;
    let module;
    try {
      module = await import(/* webpackIgnore: true */ attempt ? `${url}?attempt=${attempt}` : url);
    } catch (error) {
      this._showError(await this._whyNot(url, error));
      return;
    }
    if (this.isDisposed) return;
    this.node.textContent = '';
    this._handle = module.mountPanel(this.node, {
      request: (path, init) =>
        ServerConnection.makeRequest(URLExt.join(settings.baseUrl, 'nbqueue', path), init ?? {}, settings),
      paused: !this.isVisible,
    });
  }

  /** Tell a missing server extension (the module's URL fails) from a broken module. */
  async _whyNot(url, error) {
    try {
      const response = await ServerConnection.makeRequest(url, {}, this._settings);
      if (!response.ok) {
        const status = `${response.status} ${response.statusText || ''}`.trim();
        return `nbqueue's server extension is not loaded: ${status}`;
      }
    } catch (fetchError) {
      return `nbqueue's server extension is not loaded: ${fetchError.message || fetchError}`;
    }
    return `nbqueue's panel did not load: ${error && error.message ? error.message : error}`;
  }

  _showError(message) {
    if (this.isDisposed) return;
    const box = document.createElement('div');
    box.id = 'nbqueue-panel';
    box.className = 'jp-nbqueue-load-error';
    box.style.padding = '8px';
    box.style.color = 'var(--jp-ui-font-color1)';
    box.style.fontSize = 'var(--jp-ui-font-size1)';
    const text = document.createElement('p');
    text.setAttribute('role', 'alert');
    text.textContent = message;
    const again = document.createElement('button');
    again.type = 'button';
    again.className = 'jp-mod-styled';
    again.textContent = 'Try again';
    again.addEventListener('click', () => this._load());
    box.append(text, again);
    this.node.textContent = '';
    this.node.append(box);
  }
}

const plugin = {
  id: 'nbqueue-labextension:panel',
  description: 'The nbqueue side panel: stores, clusters, groups, running tasks and failures.',
  autoStart: true,
  optional: [ILayoutRestorer],
  activate: (app, restorer) => {
    const widget = new NbqueueSidebar();
    app.shell.add(widget, 'left', { rank: 1000 });
    if (restorer) restorer.add(widget, widget.id);
  },
};

export default plugin;
