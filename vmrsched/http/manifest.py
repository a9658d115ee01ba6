"""The Outlook add-in manifest of an integration (OfficeApp schema 1.1, MailApp, with
VersionOverrides 1.0/1.1): a button on the appointment organizer surface that opens our pane;
in 1.1 also the send check (LaunchEvent OnAppointmentSend), shared calendars and the mobile
online-meeting button.

The add-in Id is a UUIDv5 of the integration name and server host, so it never changes across
restarts (Outlook identifies installed add-ins by it) and differs between integrations. Its
Version is drawn from the manifest's own content: the same manifest keeps its version, and a
changed one (a label, a URL, an icon) gets another, which is what makes centralized deployment
and Exchange's app catalogue take it up again.
"""

from __future__ import annotations

import hashlib
import re
import uuid
import xml.etree.ElementTree as ET

from vmrsched.config import IntegrationConfig

NS_APP = "http://schemas.microsoft.com/office/appforoffice/1.1"
NS_XSI = "http://www.w3.org/2001/XMLSchema-instance"
NS_BT = "http://schemas.microsoft.com/office/officeappbasictypes/1.0"
NS_MO = "http://schemas.microsoft.com/office/mailappversionoverrides"
NS_MO11 = "http://schemas.microsoft.com/office/mailappversionoverrides/1.1"
ID_NAMESPACE = uuid.UUID("9f0c5a8e-3c43-4d55-9b7e-6a2f8c1d4e70")
VERSION_PREFIX = "1.0"  # then two parts from the content's digest (each at most 5 digits)

ET.register_namespace("", NS_APP)
ET.register_namespace("xsi", NS_XSI)
ET.register_namespace("bt", NS_BT)
ET.register_namespace("mailappor", NS_MO)
ET.register_namespace("mailappor11", NS_MO11)
PREFIX = {NS_MO: "mailappor", NS_MO11: "mailappor11"}


def addin_id(integ: IntegrationConfig, server_host: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, f"{server_host.lower()}/{integ.name}"))


def _q(ns: str, tag: str) -> str:
    return f"{{{ns}}}{tag}"


def _xsi_type(element: ET.Element, value: str) -> None:
    """xsi:type values are QNames: outside the override elements the default namespace is the
    manifest's; inside them a prefix names the override namespace explicitly."""
    element.set(_q(NS_XSI, "type"), value)


def _sub(
    parent: ET.Element, ns: str, tag: str, text: str | None = None, **attrs: str
) -> ET.Element:
    element = ET.SubElement(parent, _q(ns, tag), {k: xml_text(v) for k, v in attrs.items()})
    if text is not None:
        element.text = xml_text(text)
    return element


_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def xml_text(value: str) -> str:
    """Text XML 1.0 can hold: ElementTree writes control characters as they are, which makes
    the document ill-formed (Outlook then refuses the manifest)."""
    return _NOT_XML.sub("", value)


def _sized(icon: str, size: str) -> str:
    return icon.replace("/icon.png", f"/icon-{size}.png")


def build(integ: IntegrationConfig, base_url: str) -> bytes:
    """The manifest XML. `base_url` is the public https origin the pane is served from."""
    base = base_url.rstrip("/")
    host = base.split("://", 1)[-1]
    ad = integ.addin
    pane = f"{base}/addin/{integ.name}/taskpane.html"
    icon = f"{base}/addin/{integ.name}/icon.png"

    root = ET.Element(_q(NS_APP, "OfficeApp"))
    _xsi_type(root, "MailApp")
    _sub(root, NS_APP, "Id", addin_id(integ, host))
    version = _sub(root, NS_APP, "Version", f"{VERSION_PREFIX}.0.0")
    _sub(root, NS_APP, "ProviderName", ad.provider_name)
    _sub(root, NS_APP, "DefaultLocale", "en-US")
    _sub(root, NS_APP, "DisplayName", DefaultValue=ad.display_name)
    _sub(root, NS_APP, "Description", DefaultValue=ad.description)
    # a mail add-in's IconUrl is 64x64 and its HighResolutionIconUrl 128x128 (Microsoft's manifest
    # reference): the built-in icon comes in both; a configured icon is one 80x80 image
    sized = ad.icon == ""
    _sub(root, NS_APP, "IconUrl", DefaultValue=_sized(icon, "64") if sized else icon)
    _sub(root, NS_APP, "HighResolutionIconUrl", DefaultValue=_sized(icon, "128") if sized else icon)
    _sub(root, NS_APP, "SupportUrl", DefaultValue=f"{base}/addin/{integ.name}/support")
    domains = _sub(root, NS_APP, "AppDomains")
    _sub(domains, NS_APP, "AppDomain", base)
    hosts = _sub(root, NS_APP, "Hosts")
    _sub(hosts, NS_APP, "Host", Name="Mailbox")
    requirements = _sub(root, NS_APP, "Requirements")
    sets = _sub(requirements, NS_APP, "Sets")
    _sub(sets, NS_APP, "Set", Name="Mailbox", MinVersion="1.1")
    forms = _sub(root, NS_APP, "FormSettings")
    form = _sub(forms, NS_APP, "Form")
    _xsi_type(form, "ItemEdit")
    desktop = _sub(form, NS_APP, "DesktopSettings")
    _sub(desktop, NS_APP, "SourceLocation", DefaultValue=pane)
    _sub(root, NS_APP, "Permissions", "ReadWriteItem")
    rule = _sub(root, NS_APP, "Rule", Mode="Or")
    _xsi_type(rule, "RuleCollection")
    item_rule = _sub(rule, NS_APP, "Rule", ItemType="Appointment", FormType="Edit")
    _xsi_type(item_rule, "ItemIs")
    _sub(root, NS_APP, "DisableEntityHighlighting", "false")

    outer = _sub(root, NS_MO, "VersionOverrides")
    _xsi_type(outer, "mailappor:VersionOverridesV1_0")
    _overrides_body(outer, NS_MO, integ, base, pane, icon)
    inner = _sub(outer, NS_MO11, "VersionOverrides")
    _xsi_type(inner, "mailappor11:VersionOverridesV1_1")
    _overrides_body(inner, NS_MO11, integ, base, pane, icon)

    ET.indent(root)
    version.text = content_version(ET.tostring(root, encoding="utf-8"))
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return data


def content_version(document: bytes) -> str:
    """The manifest's Version for this content (its Version left at 0.0): two 16-bit parts of its
    SHA-256, so any change of content changes the version."""
    digest = hashlib.sha256(document).digest()
    high, low = int.from_bytes(digest[:2], "big"), int.from_bytes(digest[2:4], "big")
    return f"{VERSION_PREFIX}.{high}.{low}"


def _overrides_body(
    parent: ET.Element, ns: str, integ: IntegrationConfig, base: str, pane: str, icon: str
) -> None:
    """The ribbon button in both override versions; what only 1.1 can say is added there: the
    send check (event-based activation, Mailbox 1.12 hosts), delegates' shared calendars and the
    mobile online-meeting button. Hosts older than a feature ignore it and keep the button."""
    ad = integ.addin
    v11 = ns == NS_MO11
    requirements = _sub(parent, ns, "Requirements")
    sets = _sub(requirements, NS_BT, "Sets", DefaultMinVersion="1.3")
    _sub(sets, NS_BT, "Set", Name="Mailbox")
    hosts = _sub(parent, ns, "Hosts")
    host = _sub(hosts, ns, "Host")
    _xsi_type(host, f"{PREFIX[ns]}:MailHost")
    if v11:
        # the send check runs in the browser runtime of commands.html, or (classic Outlook on
        # Windows) in a JavaScript-only runtime that loads commands.js alone
        runtime = _sub(_sub(host, ns, "Runtimes"), ns, "Runtime", resid="commandsUrl")
        _sub(runtime, ns, "Override", type="javascript", resid="commandsJsUrl")
    form_factor = _sub(host, ns, "DesktopFormFactor")
    if v11:
        _sub(form_factor, ns, "SupportsSharedFolders", "true")
        _sub(form_factor, ns, "FunctionFile", resid="commandsUrl")
    point = _sub(form_factor, ns, "ExtensionPoint")
    _xsi_type(point, f"{PREFIX[ns]}:AppointmentOrganizerCommandSurface")
    tab = _sub(point, ns, "OfficeTab", id="TabDefault")
    group = _sub(tab, ns, "Group", id="vmrschedGroup")
    _sub(group, ns, "Label", resid="groupLabel")
    control = _sub(group, ns, "Control", id="vmrschedOpenPane")
    _xsi_type(control, f"{PREFIX[ns]}:Button")
    _sub(control, ns, "Label", resid="buttonLabel")
    tip = _sub(control, ns, "Supertip")
    _sub(tip, ns, "Title", resid="supertipTitle")
    _sub(tip, ns, "Description", resid="supertipText")
    icons = _sub(control, ns, "Icon")
    for size in ("16", "32", "80"):
        _sub(icons, NS_BT, "Image", size=size, resid=f"icon{size}")
    action = _sub(control, ns, "Action")
    _xsi_type(action, f"{PREFIX[ns]}:ShowTaskpane")
    _sub(action, ns, "SourceLocation", resid="paneUrl")
    if v11:
        _launch_event(form_factor, ns)
        if integ.enable_single_use_vmrs:
            _mobile(host, ns)

    resources = _sub(parent, ns, "Resources")
    images = _sub(resources, NS_BT, "Images")
    for size in ("16", "32", "80"):  # each size Outlook asks for, drawn at that size
        sized = icon if size == "80" else icon.replace("/icon.png", f"/icon-{size}.png")
        _sub(images, NS_BT, "Image", id=f"icon{size}", DefaultValue=sized)
    urls = _sub(resources, NS_BT, "Urls")
    _sub(urls, NS_BT, "Url", id="paneUrl", DefaultValue=pane)
    if v11:
        commands = f"{base}/addin/{integ.name}/commands.html"
        # the integration's own script: the JavaScript-only runtime gets no page, so its
        # settings (the send check's texts) come inside it
        script = f"{base}/addin/{integ.name}/commands.js"
        _sub(urls, NS_BT, "Url", id="commandsUrl", DefaultValue=commands)
        _sub(urls, NS_BT, "Url", id="commandsJsUrl", DefaultValue=script)
    short = _sub(resources, NS_BT, "ShortStrings")
    _sub(short, NS_BT, "String", id="groupLabel", DefaultValue=ad.group_label)
    _sub(short, NS_BT, "String", id="buttonLabel", DefaultValue=ad.button_label)
    _sub(short, NS_BT, "String", id="supertipTitle", DefaultValue=ad.supertip_title)
    long_strings = _sub(resources, NS_BT, "LongStrings")
    _sub(long_strings, NS_BT, "String", id="supertipText", DefaultValue=ad.supertip_text)


def _launch_event(form_factor: ET.Element, ns: str) -> None:
    """OnAppointmentSend with a Smart Alert: PromptUser lets the organizer send anyway."""
    point = _sub(form_factor, ns, "ExtensionPoint")
    _xsi_type(point, f"{PREFIX[ns]}:LaunchEvent")
    events = _sub(point, ns, "LaunchEvents")
    _sub(
        events,
        ns,
        "LaunchEvent",
        Type="OnAppointmentSend",
        FunctionName="onAppointmentSend",
        SendMode="PromptUser",
    )
    _sub(point, ns, "SourceLocation", resid="commandsUrl")


def _mobile(host: ET.Element, ns: str) -> None:
    """Outlook on iOS and Android: the online-meeting button adds a single-use room."""
    form_factor = _sub(host, ns, "MobileFormFactor")
    _sub(form_factor, ns, "FunctionFile", resid="commandsUrl")
    point = _sub(form_factor, ns, "ExtensionPoint")
    _xsi_type(point, f"{PREFIX[ns]}:MobileOnlineMeetingCommandSurface")
    control = _sub(point, ns, "Control", id="vmrschedMobileAdd")
    _xsi_type(control, f"{PREFIX[ns]}:MobileButton")
    _sub(control, ns, "Label", resid="buttonLabel")
    icons = _sub(control, ns, "Icon")
    for size, resid in (("25", "icon32"), ("32", "icon32"), ("48", "icon80")):
        for scale in ("1", "2", "3"):
            _sub(icons, NS_BT, "Image", size=size, scale=scale, resid=resid)
    action = _sub(control, ns, "Action")
    _xsi_type(action, f"{PREFIX[ns]}:ExecuteFunction")
    _sub(action, ns, "FunctionName", "addSingleUseRoom")
